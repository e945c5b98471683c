//! Rows of several requests stacked into one mini-batch along the first dimension, and the
//! outputs of that batch split back into each request's rows.

use crate::tensor::{Tensor, TensorData};

macro_rules! stacking {
    ($(($variant:ident, $ty:ty, $name:literal)),* $(,)?) => {
        /// Appends `more` to `data`; `false` (and `data` unchanged) when the datatypes differ.
        fn append(data: &mut TensorData, more: &TensorData) -> bool {
            match (data, more) {
                $((TensorData::$variant(a), TensorData::$variant(b)) => a.extend_from_slice(b),)*
                (TensorData::Bytes(a), TensorData::Bytes(b)) => a.extend_from_slice(b),
                _ => return false,
            }
            true
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

/// Stacks requests whose inputs agree in names, datatypes and every dimension but the first;
/// `None` when they do not (each request then runs on its own).
pub fn stack(requests: &[&[Tensor]]) -> Option<Vec<Tensor>> {
    let (first, rest) = requests.split_first()?;
    let mut stacked: Vec<Tensor> = first.to_vec();
    for inputs in rest {
        if inputs.len() != stacked.len() {
            return None;
        }
        for (into, more) in stacked.iter_mut().zip(inputs.iter()) {
            let fits = into.name == more.name
                && !into.shape.is_empty()
                && into.shape.len() == more.shape.len()
                && into.shape[1..] == more.shape[1..];
            if !fits || !append(&mut into.data, &more.data) {
                return None;
            }
            into.shape[0] += more.shape[0];
        }
    }
    Some(stacked)
}

/// Splits outputs computed for stacked requests of `rows` rows each back into one set of
/// outputs per request; `None` when an output's first dimension is not the total of rows.
pub fn split(outputs: &[Tensor], rows: &[usize]) -> Option<Vec<Vec<Tensor>>> {
    let total: usize = rows.iter().sum();
    let mut parts: Vec<Vec<Tensor>> = vec![Vec::with_capacity(outputs.len()); rows.len()];
    for output in outputs {
        if output.shape.first() != Some(&total) {
            return None;
        }
        let per_row: usize = output.shape[1..].iter().product();
        let mut start = 0;
        for (part, &n) in parts.iter_mut().zip(rows) {
            let mut shape = output.shape.clone();
            shape[0] = n;
            let end = start + n * per_row;
            part.push(Tensor {
                name: output.name.clone(),
                shape,
                data: slice(&output.data, start, end),
            });
            start = end;
        }
    }
    Some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], data: Vec<f32>) -> Tensor {
        Tensor { name: "x".into(), shape: shape.to_vec(), data: TensorData::F32(data) }
    }

    #[test]
    fn requests_stack_and_split_back_in_order() {
        let a = [t(&[1, 2], vec![1., 2.])];
        let b = [t(&[2, 2], vec![3., 4., 5., 6.])];
        let stacked = stack(&[&a, &b]).unwrap();
        assert_eq!(stacked, [t(&[3, 2], vec![1., 2., 3., 4., 5., 6.])]);
        let parts = split(&stacked, &[1, 2]).unwrap();
        assert_eq!(parts, [a.to_vec(), b.to_vec()]);
    }

    #[test]
    fn mismatched_requests_do_not_stack() {
        let a = [t(&[1, 2], vec![1., 2.])];
        let wider = [t(&[1, 3], vec![1., 2., 3.])];
        let ints =
            [Tensor { name: "x".into(), shape: vec![1, 2], data: TensorData::I64(vec![1, 2]) }];
        let scalar = [t(&[], vec![1.])];
        assert!(stack(&[&a, &wider]).is_none());
        assert!(stack(&[&a, &ints]).is_none());
        assert!(stack(&[&scalar, &scalar]).is_none());
    }

    #[test]
    fn outputs_without_a_batch_dimension_do_not_split() {
        assert!(split(&[t(&[2], vec![1., 2.])], &[1, 2]).is_none());
        assert!(split(&[t(&[], vec![1.])], &[1]).is_none());
    }
}
