//! A SentencePiece `spiece.model` for a unigram `tokenizer.json`: the file T5's `tokenizer_2/`
//! ships beside `tokenizer.json` (transformers' slow `T5Tokenizer` reads it; unoflow reads
//! `tokenizer.json`).
//!
//! The file is a `sentencepiece_model.proto` `ModelProto`: the pieces with their scores and
//! types (field 1), a `TrainerSpec` (field 2: unigram, vocabulary size, T5's special ids) and a
//! `NormalizerSpec` (field 3: `nmt_nfkc`, dummy prefix, whitespace handling), encoded by hand
//! (three messages do not warrant a protobuf dependency).

/// `SentencePiece.Type`.
const NORMAL: u64 = 1;
const UNKNOWN: u64 = 2;
const CONTROL: u64 = 3;

/// The `spiece.model` bytes of a `tokenizer.json` whose model is `Unigram`.
pub(super) fn model(tokenizer_json: &[u8]) -> Result<Vec<u8>, String> {
    let spec: serde_json::Value = serde_json::from_slice(tokenizer_json).map_err(|e| format!("tokenizer.json is not JSON ({e})"))?;
    let vocab = spec["model"]["vocab"].as_array().ok_or("tokenizer.json: no unigram `model.vocab`")?;
    let unk_id = spec["model"]["unk_id"].as_u64().unwrap_or(2);
    let mut out = Vec::new();
    for (id, entry) in vocab.iter().enumerate() {
        let piece = entry[0].as_str().ok_or("tokenizer.json: a vocabulary entry without a piece")?;
        let score = entry[1].as_f64().unwrap_or(0.0) as f32;
        let kind = match piece {
            _ if id as u64 == unk_id => UNKNOWN,
            "<pad>" | "</s>" | "<s>" => CONTROL,
            _ => NORMAL,
        };
        let mut message = Vec::new();
        string(&mut message, 1, piece);
        float(&mut message, 2, score);
        varint_field(&mut message, 3, kind);
        bytes_field(&mut out, 1, &message);
    }
    // TrainerSpec: model_type UNIGRAM (3 = 1), vocab_size (4), unk/bos/eos/pad ids (40–43) as T5's.
    let mut trainer = Vec::new();
    varint_field(&mut trainer, 3, 1);
    varint_field(&mut trainer, 4, vocab.len() as u64);
    varint_field(&mut trainer, 40, unk_id);
    varint_field(&mut trainer, 41, u64::MAX); // bos_id −1: T5 has none (int32 −1 is ten varint bytes)
    varint_field(&mut trainer, 42, 1);
    varint_field(&mut trainer, 43, 0);
    bytes_field(&mut out, 2, &trainer);
    // NormalizerSpec: name (1), add_dummy_prefix (3), remove_extra_whitespaces (4), escape_whitespaces (5).
    let mut normalizer = Vec::new();
    string(&mut normalizer, 1, "nmt_nfkc");
    varint_field(&mut normalizer, 3, 1);
    varint_field(&mut normalizer, 4, 1);
    varint_field(&mut normalizer, 5, 1);
    bytes_field(&mut out, 3, &normalizer);
    Ok(out)
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A field key: the field number and its wire type (0 varint, 2 length-delimited, 5 fixed32).
fn key(out: &mut Vec<u8>, field: u64, wire: u64) {
    varint(out, (field << 3) | wire);
}

fn varint_field(out: &mut Vec<u8>, field: u64, v: u64) {
    key(out, field, 0);
    varint(out, v);
}

fn bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    key(out, field, 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn string(out: &mut Vec<u8>, field: u64, s: &str) {
    bytes_field(out, field, s.as_bytes());
}

fn float(out: &mut Vec<u8>, field: u64, v: f32) {
    key(out, field, 5);
    out.extend_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_length_delimited_messages_in_vocabulary_order() {
        let json = br#"{"model": {"type": "Unigram", "unk_id": 2, "vocab": [["<pad>", 0.0], ["</s>", 0.0], ["<unk>", 0.0], ["a", -1.5]]}}"#;
        let bytes = model(json).unwrap();
        // First field: key 0x0a (field 1, length-delimited), then the piece message: "<pad>", score 0, CONTROL.
        assert_eq!(&bytes[..4], &[0x0a, 14, 0x0a, 5]);
        assert_eq!(&bytes[4..9], b"<pad>");
        assert_eq!(&bytes[9..16], &[0x15, 0, 0, 0, 0, 0x18, CONTROL as u8]);
        assert!(bytes.windows(8).any(|w| w == b"nmt_nfkc"));
    }
}
