//! Hard swish in one pass: `y = (x * clip(x + shift, low, high)) * scale`, the activation of
//! MobileNetV3-style networks as exporters write it out (PaddleOCR's classifier: `Add 3`,
//! `Clip 0 6`, `Mul x`, `Div 6`; 18 times). tract runs it as two passes over the tensor (the
//! clip chain, then the products with `x`, which needs `x` kept and a second tensor written):
//! 31 % of the classifier's run at batch 8 (`scripts/benchmarks.md`, "Engine speed II").
//! [`fuse`] finds the five nodes in the decluttered graph and puts [`HardSwish`] in their
//! place; it computes the same operations in the same order, so its results are the chain's.

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::BinMiniOp;
use tract_onnx::tract_core::ops::math::{Add, Max, Min, Mul};

use super::ops::{binary, one_op_patch, only_successor, stateless_op};

/// `(x * min(max(x + shift, low), high)) * scale` element by element, over `f32`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct HardSwish {
    shift: f32,
    low: f32,
    high: f32,
    scale: f32,
}

impl Eq for HardSwish {}

impl HardSwish {
    fn apply(&self, x: f32) -> f32 {
        (x * (x + self.shift).max(self.low).min(self.high)) * self.scale
    }
}

stateless_op!(HardSwish, "maas.HardSwish");

impl HardSwish {
    fn run(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let mut x = args_1!(inputs).into_tensor();
        let mut values = x.try_as_plain_ram_mut()?;
        values.as_slice_mut::<f32>()?.iter_mut().for_each(|value| *value = self.apply(*value));
        Ok(tvec!(x.into_tvalue()))
    }
}

impl TypedOp for HardSwish {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == f32::datum_type(), "hard swish over f32 only");
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }

    as_op!();
}

/// A patch putting [`HardSwish`] in place of the first `Add` → `Max` → `Min` → `Mul` by the
/// `Add`'s input → `Mul` chain over `f32` (each by a scalar constant but the first `Mul`)
/// whose inner results feed nothing else; `None` when there is none left.
pub(super) fn fuse(model: &TypedModel) -> TractResult<Option<TypedModelPatch>> {
    for add in &model.nodes {
        let Some(found) = chain(model, add)? else { continue };
        let (x, last, op) = found;
        return one_op_patch(model, &add.name, &[x], last, op).map(Some);
    }
    Ok(None)
}

/// The chain starting at `add`: its input `x`, its last node and the op computing it.
fn chain(model: &TypedModel, add: &TypedNode) -> TractResult<Option<(OutletId, usize, HardSwish)>> {
    let Some((x, shift)) = by_scalar::<Add>(model, add)? else { return Ok(None) };
    if model.outlet_fact(x)?.datum_type != f32::datum_type() {
        return Ok(None);
    }
    let Some(max) = only_successor(model, add)? else { return Ok(None) };
    let Some((_, low)) = by_scalar::<Max>(model, max)? else { return Ok(None) };
    let Some(min) = only_successor(model, max)? else { return Ok(None) };
    let Some((_, high)) = by_scalar::<Min>(model, min)? else { return Ok(None) };
    let Some(times_x) = only_successor(model, min)? else { return Ok(None) };
    let min_out = OutletId::new(min.id, 0);
    let is_times_x = binary::<Mul>(times_x)
        && (times_x.inputs[..] == [x, min_out] || times_x.inputs[..] == [min_out, x]);
    if !is_times_x {
        return Ok(None);
    }
    let Some(scaled) = only_successor(model, times_x)? else { return Ok(None) };
    let Some((_, scale)) = by_scalar::<Mul>(model, scaled)? else { return Ok(None) };
    // The result has the shape of `x`: no operand broadcast it to more.
    if model.outlet_fact(OutletId::new(scaled.id, 0))?.shape != model.outlet_fact(x)?.shape {
        return Ok(None);
    }
    Ok(Some((x, scaled.id, HardSwish { shift, low, high, scale })))
}

/// The other input of `node` and the value, when `node` is the binary operation `Op` of
/// something and a single-valued `f32` constant (in either place).
fn by_scalar<Op: BinMiniOp>(
    model: &TypedModel,
    node: &TypedNode,
) -> TractResult<Option<(OutletId, f32)>> {
    if !binary::<Op>(node) {
        return Ok(None);
    }
    for (slot, other) in [(1, 0), (0, 1)] {
        let Some(konst) = model.outlet_fact(node.inputs[slot])?.konst.as_ref() else { continue };
        if konst.datum_type() != f32::datum_type() || konst.len() != 1 {
            continue;
        }
        let value = konst.try_as_plain_ram()?.as_slice::<f32>()?[0];
        return Ok(Some((node.inputs[other], value)));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ops::testing::{fused_once, run};
    use tract_onnx::tract_core::ops::binary::TypedBinOp;
    use tract_onnx::tract_core::ops::math::{add, max, min, mul};

    /// `x → (x * clip(x + 3, 0, 6)) * (1/6)` as the decluttered graph holds it, with `extra`
    /// also reading the clip when set (then it must not fuse).
    fn model(extra: bool) -> TypedModel {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([2, 3, 4])).unwrap();
        let scalar = |name: &str, v: f32, model: &mut TypedModel| {
            model.add_const(name, tensor3(&[[[v]]])).unwrap()
        };
        let three = scalar("three", 3.0, &mut model);
        let zero = scalar("zero", 0.0, &mut model);
        let six = scalar("six", 6.0, &mut model);
        let sixth = scalar("sixth", 1.0 / 6.0, &mut model);
        let wire = |name: &str, op: TypedBinOp, a, b, model: &mut TypedModel| {
            model.wire_node(name, op, &[a, b]).unwrap()[0]
        };
        let shifted = wire("add", add(), x, three, &mut model);
        let low = wire("max", max(), shifted, zero, &mut model);
        let clipped = wire("min", min(), low, six, &mut model);
        let times_x = wire("mul", mul(), clipped, x, &mut model);
        let y = wire("div", mul(), times_x, sixth, &mut model);
        let mut outputs = vec![y];
        if extra {
            outputs.push(wire("other", add(), clipped, zero, &mut model));
        }
        model.select_output_outlets(&outputs).unwrap();
        model
    }

    #[test]
    fn the_chain_becomes_one_op_with_the_same_results() {
        let values: Vec<f32> = (0..24).map(|i| (i as f32 - 12.0) * 0.7).collect();
        let x = Tensor::from_shape(&[2, 3, 4], &values).unwrap();
        let expected = run(model(false), &x);
        let (fused, names) = fused_once(model(false), fuse);
        assert!(names.contains(&"maas.HardSwish".to_owned()), "{names:?}");
        assert!(!names.iter().any(|n| n.contains("Min") || n.contains("Max")), "{names:?}");
        assert_eq!(run(fused, &x), expected);
        // Below -3 zero, above 3 the input itself, between the curve.
        assert_eq!(&expected[..3], [0.0, 0.0, 0.0]);
        assert!((expected[23] - 7.7).abs() < 1e-6 && (expected[13] - 0.7 * 3.7 / 6.0).abs() < 1e-6);
    }

    #[test]
    fn a_chain_whose_inner_result_is_read_elsewhere_stays() {
        assert!(fuse(&model(true)).unwrap().is_none());
    }
}
