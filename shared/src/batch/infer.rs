//! One mini-batch through the protocol-neutral core: its stacked rows in one inference (the
//! same signature checks, limits, registry and caches as `predict`), each record's outputs
//! then rows of that inference's outputs, read where they lie. Records that do not stack, or
//! all of them when the shared inference fails on a client error, run one by one so each
//! failure lands on its own record.

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use super::minibatch::{MiniBatch, Record};
use super::tensors;
use crate::error::Error;
use crate::names::ModelId;
use crate::predictor::Predictor;
use crate::protocol::json::Elements;
use crate::signature::InferenceRequest;
use crate::tensor::Tensor;

/// What became of one record: the outputs it asked for (indices into its tensors, in the
/// order asked), or its error.
#[derive(Debug)]
pub enum Outcome {
    /// Rows `first..first + rows` of the mini-batch's shared outputs.
    Shared {
        first: usize,
        rows: usize,
        outputs: Vec<usize>,
    },
    /// Outputs of the record's own inference.
    Own {
        tensors: Vec<Tensor>,
        outputs: Vec<usize>,
    },
    Failed(Error),
}

/// A mini-batch's outcomes, one per record in order, over the outputs they share.
#[derive(Debug)]
pub struct Inferred {
    shared: Vec<Tensor>,
    pub outcomes: Vec<Outcome>,
}

/// One output of one record, written in the Open Inference Protocol's output form:
/// `{"name", "datatype", "shape", "data"}`.
pub struct OutputView<'a> {
    tensor: &'a Tensor,
    /// The rows taken from a shared output (`first`, `rows`); the whole tensor when `None`.
    rows: Option<(usize, usize)>,
}

impl OutputView<'_> {
    /// The shape and the range of elements this output covers.
    fn extent(&self) -> (Vec<usize>, std::ops::Range<usize>) {
        match self.rows {
            None => (self.tensor.shape.clone(), 0..self.tensor.data.len()),
            Some((first, rows)) => tensors::row_extent(self.tensor, first, rows),
        }
    }

    /// The output as a tensor of its own.
    pub fn to_tensor(&self) -> Tensor {
        match self.rows {
            None => self.tensor.clone(),
            Some((first, rows)) => tensors::take_rows(self.tensor, first, rows),
        }
    }
}

impl Serialize for OutputView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (shape, range) = self.extent();
        let mut map = serializer.serialize_map(Some(4))?;
        map.serialize_entry("name", &self.tensor.name)?;
        map.serialize_entry("datatype", &self.tensor.data.datatype())?;
        map.serialize_entry("shape", &shape)?;
        map.serialize_entry("data", &Elements { data: &self.tensor.data, range })?;
        map.end()
    }
}

impl Inferred {
    /// The outputs record `index` asked for, or its error.
    pub fn outputs(&self, index: usize) -> Result<Vec<OutputView<'_>>, &Error> {
        let (tensors, rows, outputs) = match &self.outcomes[index] {
            Outcome::Shared { first, rows, outputs } => {
                (&self.shared, Some((*first, *rows)), outputs)
            }
            Outcome::Own { tensors, outputs } => (tensors, None, outputs),
            Outcome::Failed(err) => return Err(err),
        };
        Ok(outputs.iter().map(|&i| OutputView { tensor: &tensors[i], rows }).collect())
    }

    /// How many records failed.
    pub fn failed(&self) -> usize {
        self.outcomes.iter().filter(|o| matches!(o, Outcome::Failed(_))).count()
    }
}

/// Runs `batch` on the model `id`. An error that is no record's fault (the store, the
/// engine) fails the whole mini-batch.
pub async fn infer(
    predictor: &Predictor,
    id: &ModelId,
    batch: MiniBatch,
) -> Result<Inferred, Error> {
    let MiniBatch { stacked, records, .. } = batch;
    let stacked_records = records.iter().filter(|r| matches!(r, Record::Stacked { .. })).count();
    let total = tensors::rows(&stacked);
    let mut inferred = Inferred { shared: Vec::new(), outcomes: Vec::with_capacity(records.len()) };
    // With several records stacked, their inputs are needed again if the shared inference
    // fails for one of them.
    let kept = (stacked_records > 1).then(|| stacked.clone());
    let mut shared = match stacked_records {
        0 => None,
        _ => Some(match (run(predictor, id, stacked).await, kept) {
            (Err(err), _) if !err.is_client_error() => return Err(err),
            (result, None) => Single(result),
            (Ok(outputs), Some(_)) if tensors::splits(&outputs, total) => {
                inferred.shared = outputs;
                Split
            }
            // The rows cannot be told apart, or one of them failed them all: one by one.
            (_, Some(inputs)) => OneByOne(inputs),
        }),
    };
    let mut first = 0;
    for record in records {
        let outcome = match record {
            Record::Failed(err) => Outcome::Failed(err),
            Record::Alone(row) => own(run(predictor, id, row.inputs).await, row.outputs)?,
            Record::Stacked { rows, outputs: wanted } => {
                let at = first;
                first += rows;
                match &mut shared {
                    Some(Split) => match chosen(&inferred.shared, wanted) {
                        Ok(outputs) => Outcome::Shared { first: at, rows, outputs },
                        Err(err) => Outcome::Failed(err),
                    },
                    Some(OneByOne(inputs)) => {
                        let inputs = tensors::rows_of(inputs, at, rows);
                        own(run(predictor, id, inputs).await, wanted)?
                    }
                    Some(Single(result)) => own(std::mem::replace(result, Ok(Vec::new())), wanted)?,
                    None => Outcome::Failed(Error::invalid_request("row lost")),
                }
            }
        };
        inferred.outcomes.push(outcome);
    }
    Ok(inferred)
}

/// How the stacked records get their outputs.
enum Shared {
    /// From the shared outputs, split by rows.
    Split,
    /// From an inference of their own, their inputs taken from these.
    OneByOne(Vec<Tensor>),
    /// The one stacked record's inference.
    Single(Result<Vec<Tensor>, Error>),
}
use Shared::{OneByOne, Single, Split};

/// A record's own inference: its outcome, or the error that fails the mini-batch.
fn own(result: Result<Vec<Tensor>, Error>, wanted: Option<Vec<String>>) -> Result<Outcome, Error> {
    match result {
        Ok(tensors) => Ok(match chosen(&tensors, wanted) {
            Ok(outputs) => Outcome::Own { tensors, outputs },
            Err(err) => Outcome::Failed(err),
        }),
        Err(err) if err.is_client_error() => Ok(Outcome::Failed(err)),
        Err(err) => Err(err),
    }
}

/// The outputs a record asked for, as indices in its order; all of them when it named none.
fn chosen(outputs: &[Tensor], wanted: Option<Vec<String>>) -> Result<Vec<usize>, Error> {
    let Some(wanted) = wanted else { return Ok((0..outputs.len()).collect()) };
    wanted
        .iter()
        .map(|name| {
            outputs
                .iter()
                .position(|o| &o.name == name)
                .ok_or_else(|| Error::invalid_request(format!("the model has no output `{name}`")))
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::input::Row;
    use crate::batch::minibatch::Bounds;
    use crate::predictor::RequestLimits;
    use crate::registry::testing::{id, Fixture};
    use crate::tensor::TensorData;

    /// A record of `rows` rows of the example forest's input.
    fn record(rows: usize, outputs: Option<&[&str]>) -> Row {
        let values = (0..rows * 4).map(|i| 0.5 + i as f32 * 0.7).collect();
        let input = Tensor {
            name: "float_input".into(),
            shape: vec![rows, 4],
            data: TensorData::F32(values),
        };
        Row { inputs: vec![input], outputs: outputs.map(|o| o.iter().map(|&n| n.into()).collect()) }
    }

    fn mini_batch() -> MiniBatch {
        let mut batch = MiniBatch::new(Bounds { rows: 8, elements: 1 << 16 });
        batch.push(Ok(record(2, None)));
        batch.push(Err(Error::invalid_request("bad record")));
        batch.push(Ok(record(1, Some(&["probabilities"]))));
        batch.push(Ok(record(2, Some(&["nothing"]))));
        batch
    }

    fn lines(inferred: &Inferred) -> Vec<String> {
        (0..inferred.outcomes.len())
            .map(|i| match inferred.outputs(i) {
                Ok(outputs) => {
                    String::from_utf8(crate::protocol::json::to_vec(&outputs).unwrap()).unwrap()
                }
                Err(err) => err.client_message(),
            })
            .collect()
    }

    #[tokio::test]
    async fn records_run_one_by_one_when_their_shared_inference_is_refused() {
        let fixture = Fixture::roomy();
        fixture.place("iris", 1).await;
        let iris = id("iris", 1);
        let roomy = Predictor::new(fixture.registry.clone(), RequestLimits::default());
        // At most two rows an inference: the five stacked rows are refused together.
        let tight = Predictor::new(
            fixture.registry.clone(),
            RequestLimits { max_batch: 2, ..RequestLimits::default() },
        );
        let shared = infer(&roomy, &iris, mini_batch()).await.unwrap();
        let alone = infer(&tight, &iris, mini_batch()).await.unwrap();
        assert!(matches!(shared.outcomes[0], Outcome::Shared { first: 0, rows: 2, .. }));
        assert!(matches!(shared.outcomes[2], Outcome::Shared { first: 2, rows: 1, .. }));
        assert!(matches!(alone.outcomes[0], Outcome::Own { .. }));
        assert_eq!(lines(&shared), lines(&alone));
        let lines = lines(&shared);
        assert!(lines[0].starts_with(r#"[{"name":"label","datatype":"INT64","shape":[2],"#));
        assert!(lines[2].starts_with(r#"[{"name":"probabilities","datatype":"FP32","shape":[1,3]"#));
        assert_eq!(lines[1], "bad record");
        assert!(lines[3].contains("no output `nothing`"), "{}", lines[3]);
        assert_eq!((shared.failed(), alone.failed()), (2, 2));
    }

    #[tokio::test]
    async fn a_record_that_does_not_stack_runs_on_its_own() {
        let fixture = Fixture::roomy();
        fixture.place("iris", 1).await;
        let predictor = Predictor::new(fixture.registry.clone(), RequestLimits::default());
        let mut batch = MiniBatch::new(Bounds { rows: 8, elements: 1 << 16 });
        batch.push(Ok(record(1, None)));
        let mut renamed = record(1, None);
        renamed.inputs[0].name = "other".into();
        batch.push(Ok(renamed));
        let inferred = infer(&predictor, &id("iris", 1), batch).await.unwrap();
        assert!(matches!(inferred.outcomes[0], Outcome::Own { .. }), "one stacked record");
        assert!(
            matches!(&inferred.outcomes[1], Outcome::Failed(err) if err.to_string().contains("other")),
            "{:?}",
            inferred.outcomes[1]
        );
    }
}
