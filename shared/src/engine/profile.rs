//! Where a model's time goes: the optimised plan the engine would run for given inputs, timed
//! node by node (`shared/examples/zoo_profile.rs`, the engine report's profiles).

use std::time::Instant;

use tract_onnx::prelude::{Framework, TValue, TVec, TractError, TractResult, TypedModel};
use tract_onnx::tract_core::plan::SimplePlan;

use super::convert::to_tract;
use super::settle::eval_node;
use super::translate::{translate, Concrete};
use super::{engine_error, rejected, Settings};
use crate::error::Error;
use crate::manifest::Planning;
use crate::tensor::Tensor;

/// One node of an optimised plan and the time it took.
#[derive(Debug, Clone)]
pub struct NodeTime {
    /// The node's name in the optimised graph (tract names fused nodes after their first one).
    pub name: String,
    /// The operator as tract prints it (its kernel choice included, e.g. `OptMatMul`).
    pub op: String,
    /// Mean milliseconds per run.
    pub ms: f64,
}

/// Validates `bytes` as an upload would, builds the plan the engine runs for `inputs` (the
/// symbolic plan, or the per-shape plan of exactly these shapes), runs it once to warm up and
/// then `runs` times, and returns every node that ran with its mean time, slowest first.
pub fn profile(bytes: &[u8], inputs: &[Tensor], runs: usize) -> Result<Vec<NodeTime>, Error> {
    let validated = super::validate(bytes, &Settings::default())?;
    let proto = tract_onnx::onnx()
        .proto_model_for_read(&mut &bytes[..])
        .map_err(|e| engine_error("cannot parse the ONNX file", e))?;
    let shapes = inputs.iter().map(|t| t.shape.clone()).collect();
    let concrete = Concrete { shapes, values: vec![None; inputs.len()] };
    let concrete = (validated.plans == Planning::PerShape).then_some(&concrete);
    let (typed, _) = translate(&proto, validated.loader, concrete)?;
    let optimised =
        super::rewrite::optimise(typed).map_err(|e| engine_error("cannot optimise", e))?;
    let values: TVec<TValue> =
        inputs.iter().cloned().map(|t| to_tract(t).map(TValue::from)).collect::<Result<_, _>>()?;
    time_nodes(optimised, values, runs).map_err(rejected)
}

/// Runs `model` once to warm up and then `runs` times on `inputs`; every node that ran with
/// its mean time, slowest first.
fn time_nodes(model: TypedModel, inputs: TVec<TValue>, runs: usize) -> TractResult<Vec<NodeTime>> {
    let plan = SimplePlan::new(model)?;
    let count = plan.model().nodes.len();
    let mut totals = vec![0f64; count];
    let mut ran = vec![false; count];
    let mut state = plan.spawn()?;
    for run in 0..=runs {
        state.run_plan_with_eval(inputs.clone(), |ctx, op_state, node, inputs| {
            let started = Instant::now();
            let outputs = eval_node(ctx, op_state, node, inputs)?;
            if run > 0 {
                totals[node.id] += started.elapsed().as_secs_f64() * 1000.0;
                ran[node.id] = true;
            }
            Ok::<_, TractError>(outputs)
        })?;
    }
    let model = plan.model();
    let mut times: Vec<NodeTime> = (0..count)
        .filter(|&id| ran[id])
        .map(|id| NodeTime {
            name: model.nodes[id].name.clone(),
            op: format!("{}", model.nodes[id].op),
            ms: totals[id] / runs.max(1) as f64,
        })
        .collect();
    times.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    Ok(times)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::prelude::{tvec, Datum, Tensor as TractTensor, TypedFact};
    use tract_onnx::tract_core::model::SpecialOps;
    use tract_onnx::tract_core::ops::math::{add, mul};

    /// `(x + 1) * x` on a vector of 1000 floats.
    fn add_mul() -> TypedModel {
        let mut model = TypedModel::default();
        let x = model.add_source("x", TypedFact::dt_shape(f32::datum_type(), [1000])).unwrap();
        let one = model
            .add_const("one", TractTensor::from(1f32).broadcast_into_rank(1).unwrap())
            .unwrap();
        let sum = model.wire_node("plus_one", add(), &[x, one]).unwrap();
        let product = model.wire_node("times_x", mul(), &[sum[0], x]).unwrap();
        model.select_output_outlets(&product).unwrap();
        model
    }

    #[test]
    fn every_node_that_ran_is_timed_slowest_first() {
        let x = TractTensor::from_shape(&[1000], &[2f32; 1000]).unwrap();
        let times = time_nodes(add_mul(), tvec![x.into()], 3).unwrap();
        let names: Vec<&str> = times.iter().map(|t| t.name.as_str()).collect();
        assert!(names.contains(&"plus_one") && names.contains(&"times_x"), "{times:?}");
        assert!(times.windows(2).all(|w| w[0].ms >= w[1].ms), "{times:?}");
        assert!(times.iter().all(|t| t.ms >= 0.0 && t.ms.is_finite()), "{times:?}");
    }

    #[test]
    fn inputs_the_model_cannot_take_are_an_error_not_a_panic() {
        let x = TractTensor::from_shape(&[10], &[2f32; 10]).unwrap();
        assert!(time_nodes(add_mul(), tvec![x.into()], 1).is_err());
    }
}
