//! One mini-batch through the protocol-neutral core: the good rows stacked into one
//! inference (the same signature checks, limits, registry and caches as `predict`), its
//! outputs split back per row; rows that cannot share an inference, or when the shared one
//! fails on a client error, run one by one so each failure lands on its own row.

use super::input::RowResult;
use super::tensors;
use crate::error::Error;
use crate::names::ModelId;
use crate::predictor::Predictor;
use crate::signature::InferenceRequest;
use crate::tensor::Tensor;

/// Each row's outputs (those it asked for, in the order asked) or its error.
pub type Outcome = Result<Vec<Tensor>, Error>;

/// Runs `rows` on the model `id`. An error that is no row's fault (the store, the engine)
/// fails the whole batch.
pub async fn infer(
    predictor: &Predictor,
    id: &ModelId,
    rows: Vec<RowResult>,
) -> Result<Vec<Outcome>, Error> {
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(rows.len());
    let mut good = Vec::new();
    for row in rows {
        match row {
            Ok(row) => {
                good.push((outcomes.len(), row));
                outcomes.push(None);
            }
            Err(err) => outcomes.push(Some(Err(err))),
        }
    }
    let inputs: Vec<&[Tensor]> = good.iter().map(|(_, row)| row.inputs.as_slice()).collect();
    let counts: Vec<usize> = inputs.iter().map(|inputs| tensors::rows(inputs)).collect();
    let shared = match tensors::stack(&inputs) {
        Some(stacked) if good.len() > 1 => match run(predictor, id, stacked).await {
            Ok(outputs) => tensors::split(&outputs, &counts),
            Err(err) if err.is_client_error() => None,
            Err(err) => return Err(err),
        },
        _ => None,
    };
    let mut per_row = shared.map(Vec::into_iter);
    for (position, row) in good {
        let outputs = match per_row.as_mut().and_then(Iterator::next) {
            Some(outputs) => Ok(outputs),
            None => match run(predictor, id, row.inputs).await {
                Err(err) if !err.is_client_error() => return Err(err),
                other => other,
            },
        };
        outcomes[position] = Some(outputs.and_then(|outputs| select(outputs, row.outputs)));
    }
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Err(Error::invalid_request("row lost"))))
        .collect())
}

async fn run(
    predictor: &Predictor,
    id: &ModelId,
    inputs: Vec<Tensor>,
) -> Result<Vec<Tensor>, Error> {
    let version = id.version.to_string();
    let request = InferenceRequest { inputs, outputs: None };
    let inference = predictor.infer(id.name.as_str(), Some(&version), |_| Ok(request)).await?;
    Ok(inference.outputs)
}

/// The outputs a row asked for, in its order; all of them when it named none.
fn select(outputs: Vec<Tensor>, wanted: Option<Vec<String>>) -> Outcome {
    let Some(wanted) = wanted else { return Ok(outputs) };
    let mut outputs: Vec<Option<Tensor>> = outputs.into_iter().map(Some).collect();
    wanted
        .iter()
        .map(|name| {
            outputs
                .iter_mut()
                .find(|o| o.as_ref().is_some_and(|o| &o.name == name))
                .and_then(Option::take)
                .ok_or_else(|| Error::invalid_request(format!("the model has no output `{name}`")))
        })
        .collect()
}
