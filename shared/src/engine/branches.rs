//! `If` nodes whose condition is known only at run time, with both branches planned once.
//! tract's `IfThenElse` clones the branch it takes and builds a plan of it on every run: 6.7
//! of the 7.8 µs of the zoo's `If` model at batch 8 (`scripts/benchmarks.md`, "Branches
//! planned once"). [`PlannedIf`] holds a plan of each branch, built when the model is
//! optimised, and runs the one the condition picks on the inputs tract's would give it.

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::logic::IfThenElse;
use tract_onnx::tract_core::plan::SimplePlan;

use super::ops::stateless_op;

type BranchPlan = SimplePlan<TypedFact, Box<dyn TypedOp>>;

/// One branch: its plan and, for each of its inputs, the `If` input it reads.
#[derive(Debug, Clone)]
struct Branch {
    plan: Arc<BranchPlan>,
    inputs: Vec<usize>,
}

impl Branch {
    fn new(body: &TypedModel, inputs: &[usize]) -> TractResult<Self> {
        Ok(Self { plan: SimplePlan::new(body.clone())?, inputs: inputs.to_vec() })
    }

    fn run(&self, inputs: &[TValue]) -> TractResult<TVec<TValue>> {
        let inputs = self.inputs.iter().map(|&i| inputs[i].clone()).collect();
        self.plan.run(inputs)
    }
}

/// tract's `IfThenElse` (kept for its output facts) with each branch planned once.
#[derive(Debug, Clone)]
pub(super) struct PlannedIf {
    original: IfThenElse,
    then: Branch,
    otherwise: Branch,
}

// Two planned branches are the same only as the same plans: tract's own `IfThenElse` never
// compares equal either.
impl PartialEq for PlannedIf {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.then.plan, &other.then.plan)
            && Arc::ptr_eq(&self.otherwise.plan, &other.otherwise.plan)
    }
}

impl Eq for PlannedIf {}

stateless_op!(PlannedIf, "maas.PlannedIf");

impl PlannedIf {
    /// `op` with its branches planned.
    pub(super) fn replacing(op: &IfThenElse) -> TractResult<Self> {
        Ok(Self {
            original: op.clone(),
            then: Branch::new(&op.then_body, &op.then_input_mapping)?,
            otherwise: Branch::new(&op.else_body, &op.else_input_mapping)?,
        })
    }

    fn run(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let condition = inputs[0].cast_to_scalar::<bool>()?;
        let branch = if condition { &self.then } else { &self.otherwise };
        branch.run(&inputs)
    }
}

impl TypedOp for PlannedIf {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.original.output_facts(inputs)
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::model::SpecialOps;
    use tract_onnx::tract_core::ops::math::{add, mul};

    /// A branch computing `x op x`.
    fn body(op: Box<dyn TypedOp>) -> TypedModel {
        let mut body = TypedModel::default();
        let x = body.add_source("x", f32::fact([3])).unwrap();
        let y = body.wire_node("y", op, &[x, x]).unwrap();
        body.select_output_outlets(&y).unwrap();
        body
    }

    /// `if c { x + x } else { x * x }`, as tract's `IfThenElse` or planned.
    fn model(planned: bool) -> TypedModel {
        let op = IfThenElse {
            then_body: body(Box::new(add())),
            then_input_mapping: vec![1],
            else_body: body(Box::new(mul())),
            else_input_mapping: vec![1],
        };
        let mut model = TypedModel::default();
        let c = model.add_source("c", bool::fact([1])).unwrap();
        let x = model.add_source("x", f32::fact([3])).unwrap();
        let y = if planned {
            model.wire_node("if", PlannedIf::replacing(&op).unwrap(), &[c, x])
        } else {
            model.wire_node("if", op, &[c, x])
        };
        model.select_output_outlets(&y.unwrap()).unwrap();
        model
    }

    fn run(model: TypedModel, condition: bool) -> Vec<f32> {
        let c = Tensor::from_shape(&[1], &[condition]).unwrap();
        let x = Tensor::from_shape(&[3], &[1f32, 2.0, 3.0]).unwrap();
        let plan = model.into_runnable().unwrap();
        let y = plan.run(tvec!(c.into_tvalue(), x.into_tvalue())).unwrap().remove(0);
        y.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec()
    }

    #[test]
    fn each_branch_gives_what_tracts_if_gives() {
        for condition in [true, false] {
            let ours = run(model(true), condition);
            assert_eq!(ours, run(model(false), condition), "condition {condition}");
        }
        assert_eq!(run(model(true), true), [2.0, 4.0, 6.0]);
        assert_eq!(run(model(true), false), [1.0, 4.0, 9.0]);
    }

    #[test]
    fn its_outputs_are_typed_as_tracts() {
        let ours = model(true);
        let tracts = model(false);
        let fact = |m: &TypedModel| m.outlet_fact(m.output_outlets().unwrap()[0]).unwrap().clone();
        assert_eq!(fact(&ours), fact(&tracts));
    }
}
