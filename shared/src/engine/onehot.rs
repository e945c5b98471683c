//! A one-hot encoding multiplied by a constant table, computed as the table's rows picked by
//! index. JAX exports an embedding this way (magika: `Equal(bytes, arange(257))`, `Cast` to
//! float, `MatMul` by a 257 × 64 table): tract builds the 257-wide one-hot tensor of every
//! byte, packs it and multiplies it out, 17 % of magika's run at batch 8 (`scripts/benchmarks.md`,
//! "Engine speed II"). [`fuse`] finds the three nodes in the decluttered graph and puts
//! [`TableRows`] in their place. Its results are the product's: each output row is the one
//! table row the one-hot row selects (the other terms are zeros), or zeros for an index
//! outside the table, which matches no column of the encoding.

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cast::Cast;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::logic::CompEq;

use super::ops::{binary, one_op_patch, only_successor, stateless_op};

/// Row `x` of a constant `f32` table for each integer `x` of the input, whose last axis (of
/// one) becomes the table's width; zeros for an `x` outside the table.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct TableRows {
    table: Arc<Tensor>,
}

impl Eq for TableRows {}

stateless_op!(TableRows, "maas.TableRows");

impl TableRows {
    fn run(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let indices = x.cast_to::<i64>()?;
        let indices = indices.try_as_plain_ram()?;
        let indices = indices.as_slice::<i64>()?;
        let table = self.table.try_as_plain_ram()?;
        let table = table.as_slice::<f32>()?;
        let (rows, width) = (self.table.shape()[0], self.table.shape()[1]);
        let mut out = vec![0f32; indices.len() * width];
        for (&index, row) in indices.iter().zip(out.chunks_exact_mut(width)) {
            if let Some(index) = usize::try_from(index).ok().filter(|&i| i < rows) {
                row.copy_from_slice(&table[index * width..][..width]);
            }
        }
        let mut shape: TVec<usize> = x.shape().into();
        *shape.last_mut().context("an input of rank 0")? = width;
        Ok(tvec!(Tensor::from_shape(&shape, &out)?.into_tvalue()))
    }
}

impl TypedOp for TableRows {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape = inputs[0].shape.to_tvec();
        ensure!(shape.last() == Some(&1.to_dim()), "indices with a last axis of one");
        *shape.last_mut().unwrap() = self.table.shape()[1].to_dim();
        Ok(tvec!(f32::fact(shape)))
    }

    as_op!();
}

/// A patch putting [`TableRows`] in place of the first `Eq(x, arange)` → `Cast` to `f32` →
/// `EinSum` by a constant table whose inner results feed nothing else; `None` when there is
/// none left.
pub(super) fn fuse(model: &TypedModel) -> TractResult<Option<TypedModelPatch>> {
    for eq in &model.nodes {
        let Some((x, product, op)) = lookup(model, eq)? else { continue };
        return one_op_patch(model, &product.name, &[x], product.id, op).map(Some);
    }
    Ok(None)
}

/// The lookup starting at `eq`: the indices `x`, the product node and the op computing it.
fn lookup<'m>(
    model: &'m TypedModel,
    eq: &TypedNode,
) -> TractResult<Option<(OutletId, &'m TypedNode, TableRows)>> {
    if !binary::<CompEq>(eq) {
        return Ok(None);
    }
    let Some(cast) = only_successor(model, eq)? else { return Ok(None) };
    if cast.op_as::<Cast>().is_none_or(|c| c.to != f32::datum_type()) {
        return Ok(None);
    }
    let Some(product) = only_successor(model, cast)? else { return Ok(None) };
    let Some(einsum) = product.op_as::<EinSum>() else { return Ok(None) };
    let encoded = OutletId::new(cast.id, 0);
    if product.inputs.len() != 2 || product.inputs[0] != encoded || einsum.q_params.is_some() {
        return Ok(None);
    }
    let Some(table) = model.outlet_fact(product.inputs[1])?.konst.clone() else {
        return Ok(None);
    };
    if table.datum_type() != f32::datum_type() || table.rank() != 2 {
        return Ok(None);
    }
    for (x, range) in [(eq.inputs[0], eq.inputs[1]), (eq.inputs[1], eq.inputs[0])] {
        let x_fact = model.outlet_fact(x)?;
        let rank = x_fact.rank();
        let one_wide = x_fact.shape.last() == Some(&1.to_dim());
        if !x_fact.datum_type.is_integer() || !one_wide || !by_last_axis(&einsum.axes, rank) {
            continue;
        }
        let Some(range) = model.outlet_fact(range)?.konst.as_ref() else { continue };
        if is_range(range, rank, table.shape()[0])? {
            return Ok(Some((x, product, TableRows { table })));
        }
    }
    Ok(None)
}

/// Whether `axes` multiplies a rank-`rank` tensor by a matrix along its last axis, keeping
/// its other axes in order: `...k,kn->...n`.
fn by_last_axis(axes: &AxesMapping, rank: usize) -> bool {
    if axes.input_count() != 2 || axes.output_count() != 1 || rank == 0 {
        return false;
    }
    let key =
        |axis: &Axis| (axis.inputs[0].to_vec(), axis.inputs[1].to_vec(), axis.outputs[0].to_vec());
    let mut found: Vec<_> = axes.iter_all_axes().map(key).collect();
    let mut expected: Vec<_> = (0..rank - 1).map(|i| (vec![i], vec![], vec![i])).collect();
    expected.push((vec![rank - 1], vec![0], vec![]));
    expected.push((vec![], vec![1], vec![rank - 1]));
    found.sort();
    expected.sort();
    found == expected
}

/// Whether `range` holds `0, 1, ..., count - 1` along its last axis, of rank `rank` with
/// every other axis one long (so that comparing with it adds just that axis).
fn is_range(range: &Tensor, rank: usize, count: usize) -> TractResult<bool> {
    let shape = range.shape();
    let ones = shape.iter().rev().skip(1).all(|&d| d == 1);
    if !range.datum_type().is_integer() || shape.len() != rank || !ones || range.len() != count {
        return Ok(false);
    }
    let values = range.cast_to::<i64>()?;
    let values = values.try_as_plain_ram()?;
    Ok(values.as_slice::<i64>()?.iter().enumerate().all(|(at, &v)| v == at as i64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ops::testing::{fused_once, run};
    use tract_onnx::tract_core::ops::binary::TypedBinOp;
    use tract_onnx::tract_core::ops::cast::cast;
    use tract_onnx::tract_core::ops::logic::comp_eq;

    /// `x: i32 [2, 3, 1]` one-hot encoded over 5 values and multiplied by a 5 × 4 table, as
    /// the decluttered graph holds it; with `extra`, the encoding is also a model output (then
    /// it must not fuse).
    fn model(range: &[i32], extra: bool) -> TypedModel {
        let mut model = TypedModel::default();
        let x = model.add_source("x", i32::fact([2, 3, 1])).unwrap();
        let range = Tensor::from_shape(&[1, 1, range.len()], range).unwrap();
        let range = model.add_const("range", range).unwrap();
        let eq = model.wire_node("eq", TypedBinOp(comp_eq(), None), &[x, range]).unwrap()[0];
        let encoded = model.wire_node("cast", cast(f32::datum_type()), &[eq]).unwrap()[0];
        let values: Vec<f32> = (0..20).map(|i| i as f32 * 0.5 - 3.0).collect();
        let table = model.add_const("table", Tensor::from_shape(&[5, 4], &values).unwrap());
        let axes: AxesMapping = "abc,cd->abd".parse().unwrap();
        let product = EinSum::new(axes, f32::datum_type());
        let y = model.wire_node("matmul", product, &[encoded, table.unwrap()]).unwrap()[0];
        let outputs = if extra { vec![y, encoded] } else { vec![y] };
        model.select_output_outlets(&outputs).unwrap();
        model
    }

    #[test]
    fn the_encoding_and_product_become_a_lookup_with_the_same_results() {
        // In the table, before it (-1) and past it (5, 9): rows of zeros.
        let x = Tensor::from_shape(&[2, 3, 1], &[0i32, 4, 2, -1, 5, 9]).unwrap();
        let expected = run(model(&[0, 1, 2, 3, 4], false), &x);
        let (fused, names) = fused_once(model(&[0, 1, 2, 3, 4], false), fuse);
        assert!(names.contains(&"maas.TableRows".to_owned()), "{names:?}");
        assert!(!names.iter().any(|n| n.contains("EinSum") || n == "Cast"), "{names:?}");
        assert_eq!(run(fused, &x), expected);
        assert_eq!(&expected[4..8], [5.0, 5.5, 6.0, 6.5], "row 4 of the table");
        assert!(expected[12..].iter().all(|&v| v == 0.0), "{expected:?}");
    }

    #[test]
    fn other_comparisons_and_shared_encodings_stay() {
        assert!(fuse(&model(&[0, 1, 2, 4, 3], false)).unwrap().is_none(), "not a range");
        assert!(fuse(&model(&[1, 2, 3, 4, 5], false)).unwrap().is_none(), "not from 0");
        assert!(fuse(&model(&[0, 1, 2, 3, 4], true)).unwrap().is_none(), "read elsewhere");
    }
}
