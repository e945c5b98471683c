//! What maas's own operators (hard swish, 2×2 max pools, table lookups) share: the tract
//! traits every stateless operator implements the same way, and the graph queries their
//! rewrites match with.

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::{BinMiniOp, OptBinByScalar, TypedBinOp};
use tract_onnx::tract_core::ops::math::Mul;

/// `Op` and `EvalOp` for a stateless operator of maas named `$name`, whose `eval` is its
/// inherent `run(&self, ctx, inputs)`; the caller has tract's `internal` prelude in scope.
macro_rules! stateless_op {
    ($op:ty, $name:literal) => {
        impl Op for $op {
            fn name(&self) -> StaticName {
                $name.into()
            }

            op_as_typed_op!();
        }

        impl EvalOp for $op {
            op_out_of_plan!();

            fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
                self.run(ctx, inputs)
            }
        }
    };
}
pub(super) use stateless_op;

/// Whether `node` is the binary operation `Op`.
pub(super) fn binary<Op: BinMiniOp>(node: &TypedNode) -> bool {
    node.op_as::<TypedBinOp>().is_some_and(|bin| bin.0.is::<Op>()) && node.inputs.len() == 2
}

/// The node that alone reads `node`'s only output, which is not a model output.
pub(super) fn only_successor<'m>(
    model: &'m TypedModel,
    node: &TypedNode,
) -> TractResult<Option<&'m TypedNode>> {
    let outlet = OutletId::new(node.id, 0);
    if node.outputs.len() != 1 || model.output_outlets()?.contains(&outlet) {
        return Ok(None);
    }
    Ok(match node.outputs[0].successors.as_slice() {
        [only] => Some(model.node(only.node)),
        _ => None,
    })
}

/// A patch computing node `last`'s output by `op` on `inputs`, as a node named `name`; the
/// nodes it replaces are swept away once nothing reads them.
pub(super) fn one_op_patch<O: TypedOp>(
    model: &TypedModel,
    name: &str,
    inputs: &[OutletId],
    last: usize,
    op: O,
) -> TractResult<TypedModelPatch> {
    let mut patch = TypedModelPatch::new(format!("{} from {name}", op.name()));
    let inputs = inputs
        .iter()
        .map(|&input| patch.tap_model(model, input))
        .collect::<TractResult<TVec<_>>>()?;
    let wire = patch.wire_node(name, op, &inputs)?[0];
    patch.shunt_outside(model, OutletId::new(last, 0), wire)?;
    Ok(patch)
}

/// An op of maas that can take a multiplication of its output by a constant into itself.
pub(super) trait Scales: TypedOp + Clone {
    /// This op with its output multiplied by `scale`, when it can take it.
    fn scaled(&self, scale: f32) -> Option<Self>;
}

/// Every `O` of `model` (an optimised model) that a multiplication by a scalar constant alone
/// reads made one `O` that scales its output.
pub(super) fn fold_scales<O: Scales>(model: &mut TypedModel) -> TractResult<()> {
    let mut changed = false;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(op) = node.op_as::<O>() else { continue };
        let Some(next) = only_successor(model, node)? else { continue };
        let Some(scale) = scalar_factor(model, node, next)? else { continue };
        let Some(op) = op.scaled(scale) else { continue };
        let patch = one_op_patch(model, &node.name, &node.inputs, next.id, op)?;
        patch.apply(model)?;
        changed = true;
    }
    if changed {
        *model = std::mem::take(model).into_compact()?;
    }
    Ok(())
}

/// The `f32` that `next` multiplies `node`'s output by, when `next` is a multiplication by a
/// constant of one value that keeps the output's shape.
fn scalar_factor(
    model: &TypedModel,
    node: &TypedNode,
    next: &TypedNode,
) -> TractResult<Option<f32>> {
    let by_scalar = next.op_as::<OptBinByScalar>().is_some_and(|op| op.binop.is::<Mul>());
    let mul = binary::<Mul>(next) || (by_scalar && next.inputs.len() == 2);
    let output = OutletId::new(node.id, 0);
    let Some(slot) = next.inputs.iter().position(|&i| i == output) else { return Ok(None) };
    if !mul {
        return Ok(None);
    }
    let same_shape =
        model.outlet_fact(OutletId::new(next.id, 0))?.shape == model.outlet_fact(output)?.shape;
    let factor = model.outlet_fact(next.inputs[1 - slot])?.konst.clone();
    let Some(factor) = factor.filter(|f| f.len() == 1 && f.datum_type() == f32::datum_type())
    else {
        return Ok(None);
    };
    same_shape.then(|| factor.cast_to_scalar::<f32>()).transpose()
}

/// What the tests of maas's rewrites share.
#[cfg(test)]
pub(super) mod testing {
    use super::*;
    use tract_linalg::multithread::{multithread_tract_scope, Executor};

    /// The first output of `model` run on `x`, as `f32`s.
    pub(in crate::engine) fn run(model: TypedModel, x: &Tensor) -> Vec<f32> {
        let plan = model.into_runnable().unwrap();
        let out = plan.run(tvec!(x.clone().into_tvalue())).unwrap();
        out[0].try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec()
    }

    /// Runs `op` on `input` as the only node of a plan.
    pub(in crate::engine) fn run_alone(op: Box<dyn TypedOp>, input: &Tensor) -> Tensor {
        let mut model = TypedModel::default();
        let fact = input.datum_type().fact(input.shape());
        let source = model.add_source("x", fact).unwrap();
        let out = model.wire_node("op", op, &[source]).unwrap();
        model.select_output_outlets(&out).unwrap();
        let plan = model.into_runnable().unwrap();
        // tract's own pool asks for the engine's executor, as in `Model::run`.
        let outputs = multithread_tract_scope(Executor::SingleThread, || {
            plan.run(tvec!(input.clone().into_tvalue()))
        });
        outputs.unwrap().remove(0).into_tensor()
    }

    /// `model` with the patch of `fuse` applied, checked to leave nothing more to fuse, and
    /// the names of its ops.
    pub(in crate::engine) fn fused_once(
        mut model: TypedModel,
        fuse: impl Fn(&TypedModel) -> TractResult<Option<TypedModelPatch>>,
    ) -> (TypedModel, Vec<String>) {
        let patch = fuse(&model).unwrap().expect("something to fuse");
        patch.apply(&mut model).unwrap();
        let model = model.into_compact().unwrap();
        assert!(fuse(&model).unwrap().is_none(), "fused once");
        let names = model.nodes.iter().map(|n| n.op.name().to_string()).collect();
        (model, names)
    }
}
