//! Rows of several records stacked into one mini-batch along the first dimension, and rows
//! taken back out of a batch's tensors.

use crate::tensor::{Tensor, TensorData};

macro_rules! stacking {
    ($(($variant:ident, $ty:ty, $name:literal)),* $(,)?) => {
        /// Appends `more` to `data`; `false` (and `data` unchanged) when the datatypes differ.
        fn extend(data: &mut TensorData, more: TensorData) -> bool {
            match (data, more) {
                $((TensorData::$variant(a), TensorData::$variant(b)) => a.extend(b),)*
                (TensorData::Bytes(a), TensorData::Bytes(b)) => a.extend(b),
                _ => return false,
            }
            true
        }

        /// Makes room in `data` for `more` elements, in one allocation.
        fn reserve(data: &mut TensorData, more: usize) {
            match data {
                $(TensorData::$variant(v) => v.reserve_exact(more),)*
                TensorData::Bytes(v) => v.reserve_exact(more),
            }
        }

        /// Elements `start..end` of `data`.
        fn slice(data: &TensorData, start: usize, end: usize) -> TensorData {
            match data {
                $(TensorData::$variant(v) => TensorData::$variant(v[start..end].to_vec()),)*
                TensorData::Bytes(v) => TensorData::Bytes(v[start..end].to_vec()),
            }
        }
    };
}
crate::for_each_numeric_type!(stacking);

/// The rows of a request: the first dimension of its first input (1 for a scalar).
pub fn rows(inputs: &[Tensor]) -> usize {
    inputs.first().and_then(|t| t.shape.first().copied()).unwrap_or(1)
}

/// The rows of a record whose inputs can be stacked with others': each has a first
/// dimension, the same in all.
pub fn stackable(inputs: &[Tensor]) -> Option<usize> {
    let rows = *inputs.first()?.shape.first()?;
    inputs.iter().all(|t| t.shape.first() == Some(&rows)).then_some(rows)
}

/// Makes room in `inputs`, a record of `rows` rows, for `more_rows` rows more: a mini-batch
/// then allocates its buffers once, at their full size, instead of growing them as rows come
/// (which left holes of every size in between in malloc's heap: a 784-input job's peak
/// memory grew with the file).
pub fn reserve_rows(inputs: &mut [Tensor], rows: usize, more_rows: usize) {
    for tensor in inputs {
        let per_row = tensor.data.len() / rows.max(1);
        reserve(&mut tensor.data, per_row.saturating_mul(more_rows));
    }
}

/// Appends a record's inputs to `stacked` when they are [`stackable`] and agree with it in
/// names, datatypes and every dimension but the first; returns their rows, or gives the
/// inputs back (`stacked` unchanged) when they do not fit.
pub fn append(stacked: &mut [Tensor], inputs: Vec<Tensor>) -> Result<usize, Vec<Tensor>> {
    let Some(rows) = stackable(&inputs) else { return Err(inputs) };
    let fits = stacked.len() == inputs.len()
        && stacked.iter().zip(&inputs).all(|(into, more)| {
            into.name == more.name
                && into.data.datatype() == more.data.datatype()
                && into.shape.len() == more.shape.len()
                && into.shape[1..] == more.shape[1..]
        });
    if !fits {
        return Err(inputs);
    }
    for (into, more) in stacked.iter_mut().zip(inputs) {
        let appended = extend(&mut into.data, more.data);
        debug_assert!(appended, "datatypes are compared first");
        into.shape[0] += rows;
    }
    Ok(rows)
}

/// The shape of rows `first..first + rows` of a tensor whose first dimension is a batch of
/// rows, and the range of its flat elements they are.
pub fn row_extent(
    tensor: &Tensor,
    first: usize,
    rows: usize,
) -> (Vec<usize>, std::ops::Range<usize>) {
    let per_row: usize = tensor.shape[1..].iter().product();
    let mut shape = tensor.shape.clone();
    shape[0] = rows;
    (shape, first * per_row..(first + rows) * per_row)
}

/// Rows `first..first + rows` of a tensor whose first dimension is a batch of rows.
pub fn take_rows(tensor: &Tensor, first: usize, rows: usize) -> Tensor {
    let (shape, range) = row_extent(tensor, first, rows);
    let data = slice(&tensor.data, range.start, range.end);
    Tensor { name: tensor.name.clone(), shape, data }
}

/// [`take_rows`] of each tensor.
pub fn rows_of(tensors: &[Tensor], first: usize, rows: usize) -> Vec<Tensor> {
    tensors.iter().map(|tensor| take_rows(tensor, first, rows)).collect()
}

/// Whether every output has `rows` as its first dimension, so that each record's rows can
/// be told apart.
pub fn splits(outputs: &[Tensor], rows: usize) -> bool {
    outputs.iter().all(|output| output.shape.first() == Some(&rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], data: Vec<f32>) -> Tensor {
        Tensor { name: "x".into(), shape: shape.to_vec(), data: TensorData::F32(data) }
    }

    #[test]
    fn requests_stack_and_come_apart_in_order() {
        let a = t(&[1, 2], vec![1., 2.]);
        let b = t(&[2, 2], vec![3., 4., 5., 6.]);
        let mut stacked = vec![a.clone()];
        assert_eq!(append(&mut stacked, vec![b.clone()]), Ok(2));
        assert_eq!(stacked, [t(&[3, 2], vec![1., 2., 3., 4., 5., 6.])]);
        assert!(splits(&stacked, 3));
        assert_eq!(rows_of(&stacked, 0, 1), [a]);
        assert_eq!(rows_of(&stacked, 1, 2), [b]);
    }

    #[test]
    fn mismatched_requests_do_not_stack_and_are_given_back() {
        let a = t(&[1, 2], vec![1., 2.]);
        let wider = vec![t(&[1, 3], vec![1., 2., 3.])];
        let ints =
            vec![Tensor { name: "x".into(), shape: vec![1, 2], data: TensorData::I64(vec![1, 2]) }];
        let scalar = vec![t(&[], vec![1.])];
        let two = vec![a.clone(), a.clone()];
        let mut uneven = vec![a.clone(), t(&[2, 2], vec![0.; 4])];
        uneven[1].name = "y".into();
        for inputs in [wider, ints, scalar, two] {
            let mut stacked = vec![a.clone()];
            assert_eq!(append(&mut stacked, inputs.clone()), Err(inputs));
            assert_eq!(stacked, std::slice::from_ref(&a));
        }
        let mut pair = uneven.clone();
        pair[1].shape[0] = 1;
        pair[1].data = TensorData::F32(vec![0.; 2]);
        assert_eq!(append(&mut pair, uneven.clone()), Err(uneven), "rows differ between inputs");
    }

    #[test]
    fn outputs_without_a_batch_dimension_do_not_split() {
        assert!(!splits(&[t(&[2], vec![1., 2.])], 3));
        assert!(!splits(&[t(&[], vec![1.])], 1));
    }
}
