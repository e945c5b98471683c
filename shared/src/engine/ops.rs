//! What maas's own operators (hard swish, 2×2 max pools, table lookups) share: the tract
//! traits every stateless operator implements the same way, and the graph queries their
//! rewrites match with.

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::{BinMiniOp, TypedBinOp};

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

/// A patch computing node `last`'s output by `op` on `input` alone, as a node named `name`;
/// the nodes it replaces are swept away once nothing reads them.
pub(super) fn one_op_patch<O: TypedOp>(
    model: &TypedModel,
    name: &str,
    input: OutletId,
    last: usize,
    op: O,
) -> TractResult<TypedModelPatch> {
    let mut patch = TypedModelPatch::new(format!("{} from {name}", op.name()));
    let input = patch.tap_model(model, input)?;
    let wire = patch.wire_node(name, op, &[input])?[0];
    patch.shunt_outside(model, OutletId::new(last, 0), wire)?;
    Ok(patch)
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
