//! A mini-batch as the reader gathers it. Records whose inputs fit together are stacked into
//! one set of inputs as they are read, so a mini-batch in flight is one buffer per input
//! rather than one per row, and inference needs no copy to stack them. Its size is bounded in
//! rows and in input elements: wide rows make mini-batches of fewer rows, not larger buffers.

use super::input::{Row, RowResult};
use super::tensors;
use crate::error::Error;
use crate::tensor::Tensor;

/// How large a mini-batch grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Records, at most.
    pub rows: usize,
    /// Stacked input elements: once the first record shows how wide rows are, the rows are
    /// cut to the largest power of two (the engine's per-shape plan buckets) that fits.
    pub elements: usize,
}

/// One record's place in a mini-batch.
#[derive(Debug)]
pub enum Record {
    /// The next `rows` rows of the stacked inputs, asking for `outputs` (all when `None`).
    Stacked { rows: usize, outputs: Option<Vec<String>> },
    /// A record whose inputs do not stack with the first one's (names, datatypes, or any
    /// dimension but the first differ); it runs on its own.
    Alone(Row),
    /// A record that could not be decoded.
    Failed(Error),
}

/// Records in file order, the stackable ones' inputs gathered into `stacked`.
#[derive(Debug)]
pub struct MiniBatch {
    pub stacked: Vec<Tensor>,
    pub records: Vec<Record>,
    bounds: Bounds,
    /// Input elements of the records added, stacked or alone.
    elements: usize,
}

impl MiniBatch {
    pub fn new(bounds: Bounds) -> Self {
        MiniBatch { stacked: Vec::new(), records: Vec::new(), bounds, elements: 0 }
    }

    /// Adds a record: stacked when its inputs fit the first stacked record's.
    pub fn push(&mut self, row: RowResult) {
        if let Ok(row) = &row {
            self.elements += row.inputs.iter().map(|t| t.data.len()).sum::<usize>();
        }
        let record = match row {
            Err(err) => Record::Failed(err),
            Ok(mut row) if self.stacked.is_empty() => match tensors::stackable(&row.inputs) {
                Some(rows) => {
                    self.narrow_to(&row.inputs, rows);
                    let more_records = self.bounds.rows.saturating_sub(self.records.len());
                    self.records.reserve_exact(more_records);
                    let more_rows = self.bounds.rows.saturating_sub(rows);
                    tensors::reserve_rows(&mut row.inputs, rows, more_rows);
                    self.stacked = row.inputs;
                    Record::Stacked { rows, outputs: row.outputs }
                }
                None => Record::Alone(row),
            },
            Ok(row) => match tensors::append(&mut self.stacked, row.inputs) {
                Ok(rows) => Record::Stacked { rows, outputs: row.outputs },
                Err(inputs) => Record::Alone(Row { inputs, outputs: row.outputs }),
            },
        };
        self.records.push(record);
    }

    /// Whether the mini-batch holds as many records, or input elements, as it may.
    pub fn is_full(&self) -> bool {
        self.records.len() >= self.bounds.rows || self.elements >= self.bounds.elements
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Cuts the row bound so that rows as wide as the first record's stay within the
    /// element bound, in a power of two.
    fn narrow_to(&mut self, inputs: &[Tensor], rows: usize) {
        let rows = rows.max(1);
        let per_row = (inputs.iter().map(|t| t.data.len()).sum::<usize>() / rows).max(1);
        let fits = (self.bounds.elements / per_row).max(1);
        let power_of_two = 1 << fits.ilog2();
        self.bounds.rows = self.bounds.rows.min(power_of_two);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::TensorData;

    fn row(values: &[f32]) -> RowResult {
        let tensor = Tensor {
            name: "x".into(),
            shape: vec![1, values.len()],
            data: TensorData::F32(values.to_vec()),
        };
        Ok(Row { inputs: vec![tensor], outputs: None })
    }

    const WIDE: Bounds = Bounds { rows: 256, elements: 1 << 20 };

    #[test]
    fn rows_that_fit_are_stacked_in_order_and_the_others_keep_their_place() {
        let mut batch = MiniBatch::new(WIDE);
        batch.push(row(&[1., 2.]));
        batch.push(Err(Error::invalid_request("bad")));
        batch.push(row(&[3., 4., 5.]));
        batch.push(row(&[6., 7.]));
        assert_eq!(batch.stacked[0].shape, [2, 2]);
        assert_eq!(batch.stacked[0].data, TensorData::F32(vec![1., 2., 6., 7.]));
        assert!(matches!(batch.records[0], Record::Stacked { rows: 1, .. }));
        assert!(matches!(batch.records[1], Record::Failed(_)));
        assert!(matches!(&batch.records[2], Record::Alone(row) if row.inputs[0].shape == [1, 3]));
        assert!(matches!(batch.records[3], Record::Stacked { rows: 1, .. }));
        assert_eq!(batch.len(), 4);
    }

    #[test]
    fn a_failed_first_record_does_not_stop_the_next_from_stacking() {
        let mut batch = MiniBatch::new(WIDE);
        batch.push(Err(Error::invalid_request("bad")));
        batch.push(row(&[1.]));
        batch.push(row(&[2.]));
        assert_eq!(batch.stacked[0].data, TensorData::F32(vec![1., 2.]));
    }

    #[test]
    fn wide_rows_make_smaller_mini_batches_in_powers_of_two() {
        let bounds = Bounds { rows: 256, elements: 1000 };
        let mut batch = MiniBatch::new(bounds);
        let wide = vec![0.5; 100];
        for _ in 0..7 {
            batch.push(row(&wide));
            assert!(!batch.is_full());
        }
        batch.push(row(&wide));
        // 1000 elements hold 10 rows of 100: 8 is the power of two.
        assert!(batch.is_full());

        let TensorData::F32(stacked) = &batch.stacked[0].data else { panic!("FP32 rows") };
        assert_eq!(stacked.capacity(), 8 * 100, "the first record made room for the others");
        assert_eq!(batch.records.capacity(), 8, "room for the narrowed rows, not 256");

        let mut narrow = MiniBatch::new(bounds);
        narrow.push(row(&[1., 2., 3., 4.]));
        assert_eq!(narrow.bounds.rows, 128);
        let mut huge = MiniBatch::new(bounds);
        huge.push(row(&vec![0.0; 5000]));
        assert!(huge.is_full(), "a row wider than the bound is a mini-batch of its own");
    }
}
