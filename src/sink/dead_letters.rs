//! The dead-letter files every sink writes: the events one flush (or one
//! delivery) could not store, with their reasons, as one Parquet file under
//! `<lake>/_dead_letters/<pipeline>/`, named like the sink's own files by
//! the offsets the events came from ([`super::files`]), so a re-flush after
//! a crash rewrites the same file. `tributary replay` reads them back.

use std::ops::Range;

use bytes::Bytes;
use parquet::errors::ParquetError;

use super::files;
use crate::encode::{dead_letter, DeadLetter};

/// The name and bytes of the dead-letter file of `sink` (of `pipeline`, on
/// `partition` of a JetStream log) for the events of offsets `range`.
pub fn file(
    pipeline: &str,
    sink: &str,
    partition: Option<u32>,
    range: &Range<u64>,
    dead: &[DeadLetter],
) -> Result<(String, Bytes), ParquetError> {
    let batch = dead_letter::batch(pipeline, sink, dead);
    let prefix = match partition {
        None => format!("{sink}-"),
        Some(p) => format!("{sink}-p{p}-"),
    };
    let body = files::serialise(&batch, &files::writer_properties())?;
    Ok((files::file_name(&prefix, range), body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_file_is_named_by_its_sink_partition_and_offsets() {
        let event = crate::event::Event::new(Bytes::from_static(b"{\"id\": \"x\"}"));
        let dead = [DeadLetter::new(&event, "does not fit")];
        let (name, body) = file("shop", "files", Some(3), &(10..12), &dead).unwrap();
        assert_eq!(
            name,
            "files-p3-00000000000000000010-00000000000000000011.parquet"
        );
        assert_eq!(files::end_offset(&name), Some(12));
        let (plain, _) = file("shop", "files", None, &(10..11), &dead).unwrap();
        assert!(plain.starts_with("files-0000"), "{plain}");
        assert!(body.starts_with(b"PAR1"));
    }
}
