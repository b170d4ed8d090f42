//! Partition values that fit a path. A table partitioned by a column keeps
//! each value in a directory name (`col=value`, percent-escaped by Hive's and
//! Delta's rules), and file systems and object stores cap the length of a
//! name and of a key. A row whose value could not name its directory is a
//! dead letter with that reason, decided before anything is written: one
//! such value must never make every write of its sink fail.

use std::ops::Range;

use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::ArrowError;

/// Longest `col=value` directory name, escaped: below the 255 bytes of a file
/// name on Linux file systems, with room for the escaping of either format.
pub const MAX_SEGMENT_BYTES: usize = 200;
/// Longest path of all partition directories together: S3 keys take 1024
/// bytes, and the table's prefix and the file name need their share.
pub const MAX_PATH_BYTES: usize = 512;

/// Bytes `value` takes in a path at most: Delta escapes more punctuation
/// than Hive does, and both escape every byte outside ASCII, so count
/// three for anything but letters, digits and `-_.~`.
fn escaped_len(value: &str) -> usize {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                1
            } else {
                3
            }
        })
        .sum()
}

/// Runs of consecutive rows of `batch` that agree on every column of
/// `columns` (nulls agree with nulls): a flush's rows mostly share their
/// partition values, so each run's values are formatted once, not per row.
pub fn runs(batch: &RecordBatch, columns: &[ArrayRef]) -> Result<Vec<Range<usize>>, ArrowError> {
    if batch.num_rows() == 0 {
        return Ok(Vec::new());
    }
    if columns.is_empty() {
        return Ok(vec![0..batch.num_rows()]);
    }
    Ok(arrow_ord::partition::partition(columns)?.ranges())
}

/// The rows of `batch` whose partition directories would not fit a path,
/// each with the reason for its dead letter.
pub fn unfit_rows(
    batch: &RecordBatch,
    partition_by: &[String],
) -> Result<Vec<(usize, String)>, ArrowError> {
    let (names, arrays): (Vec<&String>, Vec<ArrayRef>) = partition_by
        .iter()
        .filter_map(|c| batch.column_by_name(c).map(|a| (c, a.clone())))
        .unzip();
    if arrays.is_empty() {
        return Ok(Vec::new());
    }
    let options = FormatOptions::default();
    let formatters = arrays
        .iter()
        .map(|a| ArrayFormatter::try_new(a.as_ref(), &options))
        .collect::<Result<Vec<_>, _>>()?;
    let mut unfit = Vec::new();
    for run in runs(batch, &arrays)? {
        let row = run.start;
        let mut path_len = 0;
        let mut why = None;
        for ((column, array), formatter) in names.iter().zip(&arrays).zip(&formatters) {
            if array.is_null(row) {
                continue;
            }
            let value = formatter.value(row).to_string();
            let segment = column.len() + 1 + escaped_len(&value);
            path_len += segment + 1;
            if segment > MAX_SEGMENT_BYTES {
                why = Some(format!(
                    "the partition value of {column} ({} bytes) does not fit a directory name: `{column}=value` may take {MAX_SEGMENT_BYTES} bytes once escaped; partition by a shorter column, or replay after changing partition_by",
                    value.len()
                ));
                break;
            } else if path_len > MAX_PATH_BYTES {
                why = Some(format!(
                    "the partition values ({}) make a path longer than {MAX_PATH_BYTES} bytes once escaped; partition by fewer or shorter columns, or replay after changing partition_by",
                    partition_by.join(", ")
                ));
                break;
            }
        }
        if let Some(why) = why {
            unfit.extend(run.map(|row| (row, why.clone())));
        }
    }
    Ok(unfit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::StringArray;
    use arrow_schema::{DataType, Field, Schema};
    use std::sync::Arc;

    #[test]
    fn long_or_heavily_escaped_values_are_unfit_and_others_pass() {
        let values = [
            Some("CA".to_string()),
            Some("x".repeat(300)),
            Some("/".repeat(120)),
            None,
            Some("é".repeat(30)),
            Some("a".repeat(190)),
        ];
        let schema = Arc::new(Schema::new(vec![Field::new("state", DataType::Utf8, true)]));
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(values.to_vec()))])
                .unwrap();
        let unfit = unfit_rows(&batch, &["state".into()]).unwrap();
        let rows: Vec<usize> = unfit.iter().map(|(r, _)| *r).collect();
        // 120 slashes escape to 360 bytes; 190 letters + "state=" is 196.
        assert_eq!(rows, [1, 2]);
        assert!(unfit[0].1.contains("partition value of state (300 bytes)"));
        assert!(unfit_rows(&batch, &[]).unwrap().is_empty());
    }

    #[test]
    fn every_row_of_a_run_of_one_unfit_value_is_unfit() {
        let long = "x".repeat(300);
        let values = [
            Some(long.as_str()),
            Some(&long),
            Some("CA"),
            None,
            None,
            Some(&long),
        ];
        let schema = Arc::new(Schema::new(vec![Field::new("state", DataType::Utf8, true)]));
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(values.to_vec()))])
                .unwrap();
        let rows: Vec<usize> = unfit_rows(&batch, &["state".into()])
            .unwrap()
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        assert_eq!(rows, [0, 1, 5]);
    }

    #[test]
    fn many_columns_together_are_bounded_too() {
        let columns: Vec<String> = (0..4).map(|i| format!("c{i}")).collect();
        let schema = Arc::new(Schema::new(
            columns
                .iter()
                .map(|c| Field::new(c, DataType::Utf8, true))
                .collect::<Vec<_>>(),
        ));
        let arrays = columns
            .iter()
            .map(|_| Arc::new(StringArray::from(vec!["v".repeat(150)])) as _)
            .collect();
        let batch = RecordBatch::try_new(schema, arrays).unwrap();
        let unfit = unfit_rows(&batch, &columns).unwrap();
        assert_eq!(unfit.len(), 1);
        assert!(
            unfit[0].1.contains("longer than 512 bytes"),
            "{}",
            unfit[0].1
        );
    }
}
