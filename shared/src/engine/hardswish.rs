//! Hard swish in one pass: `y = (x * clip(x + shift, low, high)) * scale`, the activation of
//! MobileNetV3-style networks as exporters write it out (PaddleOCR's classifier: `Add 3`,
//! `Clip 0 6`, `Mul x`, `Div 6`; 18 times). tract runs it as two passes over the tensor (the
//! clip chain, then the products with `x`, which needs `x` kept and a second tensor written):
//! 31 % of the classifier's run at batch 8 (`scripts/benchmarks.md`, "Engine speed II").
//! [`fuse`] finds the five nodes in the decluttered graph and puts [`HardSwish`] in their
//! place; it computes the same operations in the same order, so its results are the chain's,
//! 8 values at a time in AVX registers where the CPU has AVX. A hard swish after a depthwise
//! convolution is applied inside it ([`super::depthwise`]).

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::BinMiniOp;
use tract_onnx::tract_core::ops::math::{Add, Max, Min, Mul};

use super::ops::{binary, one_op_patch, only_successor, stateless_op};

/// `(x * min(max(x + shift, low), high)) * scale` element by element, over `f32`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct HardSwish {
    shift: f32,
    low: f32,
    high: f32,
    scale: f32,
}

impl Eq for HardSwish {}

#[cfg(test)]
impl HardSwish {
    /// `x * clip(x + 3, 0, 6) / 6`, as PyTorch and PaddlePaddle export it.
    pub(super) const STANDARD: Self = Self { shift: 3.0, low: 0.0, high: 6.0, scale: 1.0 / 6.0 };
}

impl HardSwish {
    /// The activation of one value.
    pub(super) fn apply(&self, x: f32) -> f32 {
        (x * (x + self.shift).max(self.low).min(self.high)) * self.scale
    }

    /// [`Self::apply`] on the 8 values of an AVX register (the same operations in the same
    /// order; for numbers other than NaN the same results).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx")]
    pub(super) fn apply_8(&self, x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::_mm256_set1_ps as splat;
        use std::arch::x86_64::{_mm256_add_ps, _mm256_max_ps, _mm256_min_ps, _mm256_mul_ps};
        let clipped = _mm256_add_ps(x, splat(self.shift));
        let clipped = _mm256_min_ps(_mm256_max_ps(clipped, splat(self.low)), splat(self.high));
        _mm256_mul_ps(_mm256_mul_ps(x, clipped), splat(self.scale))
    }

    /// [`Self::apply`] over `values` in place, 8 at a time where the CPU has AVX.
    fn apply_all(&self, values: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: the CPU has AVX, checked just above.
            return unsafe { self.apply_all_avx(values) };
        }
        values.iter_mut().for_each(|value| *value = self.apply(*value));
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx")]
    fn apply_all_avx(&self, values: &mut [f32]) {
        use std::arch::x86_64::{_mm256_loadu_ps, _mm256_storeu_ps};
        let mut chunks = values.chunks_exact_mut(8);
        for chunk in &mut chunks {
            // SAFETY: `chunk` holds the 8 values read and written.
            unsafe {
                _mm256_storeu_ps(chunk.as_mut_ptr(), self.apply_8(_mm256_loadu_ps(chunk.as_ptr())))
            };
        }
        chunks.into_remainder().iter_mut().for_each(|value| *value = self.apply(*value));
    }
}

stateless_op!(HardSwish, "maas.HardSwish");

impl HardSwish {
    fn run(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let mut x = args_1!(inputs).into_tensor();
        let mut values = x.try_as_plain_ram_mut()?;
        self.apply_all(values.as_slice_mut::<f32>()?);
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
    fn the_vector_pass_gives_each_values_activation() {
        let op = HardSwish { shift: 3.0, low: 0.0, high: 6.0, scale: 1.0 / 6.0 };
        // Not a whole number of registers: the last 3 values one by one.
        let values: Vec<f32> = (0..27).map(|i| (i as f32 - 13.0) * 0.6).collect();
        let mut all = values.clone();
        op.apply_all(&mut all);
        let each: Vec<f32> = values.iter().map(|&v| op.apply(v)).collect();
        assert_eq!(all, each);
        assert!(all[0] == 0.0 && (all[26] - values[26]).abs() < 1e-5 && all[12] < 0.0);
    }

    #[test]
    fn a_chain_whose_inner_result_is_read_elsewhere_stays() {
        assert!(fuse(&model(true)).unwrap().is_none());
    }
}
