//! Text tokenizers from the files model folders ship (CLIP's BPE, T5's SentencePiece-unigram),
//! padded and truncated to the fixed lengths FLUX and CLIP use.
//!
//! Most folders ship a `tokenizer.json`. FLUX.1's `tokenizer/` ships CLIP's slow-tokenizer files
//! only (`vocab.json` + `merges.txt`); [`TextTokenizer::clip_dir`] builds the same tokenizer from
//! them, with the normalizer, pre-tokenizer, post-processor and decoder transformers' fast CLIP
//! tokenizer sets ([`clip_tokenizer_json`]), so the ids are those of the `tokenizer.json` route.

use std::path::{Path, PathBuf};

/// Problems loading or running a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: cannot load the tokenizer: {message}")]
    Load { path: PathBuf, message: String },
    #[error("{path}: the tokenizer has no `{token}` token to pad with")]
    NoPadToken { path: PathBuf, token: String },
    #[error("tokenizing failed: {0}")]
    Encode(String),
}

/// CLIP's end (and padding) token; `<|startoftext|>` begins every text.
const CLIP_END: &str = "<|endoftext|>";
const CLIP_START: &str = "<|startoftext|>";

/// The `tokenizer.json` of CLIP's BPE from the slow tokenizer's `vocab.json` (token → id) and
/// `merges.txt` (a `#version` line, then one `left right` pair a line), set up as transformers'
/// `CLIPTokenizerFast` sets it (`convert_slow_tokenizer.CLIPConverter`): NFC, whitespace runs to
/// one space, lowercase; words split on CLIP's pattern, then bytes mapped as GPT-2 does; `</w>`
/// ends a word; `<|startoftext|>` … `<|endoftext|>` around every text.
pub fn clip_tokenizer_json(vocab_json: &str, merges_txt: &str) -> Result<serde_json::Value, String> {
    let vocab: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(vocab_json).map_err(|e| format!("vocab.json is not a JSON object of token ids ({e})"))?;
    let id = |token: &str| vocab.get(token).and_then(serde_json::Value::as_u64).ok_or_else(|| format!("vocab.json has no `{token}` token"));
    let (start, end) = (id(CLIP_START)?, id(CLIP_END)?);
    let merges = merges_txt
        .lines()
        .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
        .map(|l| l.split_once(' ').map(|(a, b)| [a, b]).ok_or_else(|| format!("merges.txt: `{l}` is not a pair")))
        .collect::<Result<Vec<_>, _>>()?;
    let special = |id: u64, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
                           "normalized": false, "special": true})
    };
    let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    Ok(serde_json::json!({
        "version": "1.0",
        "added_tokens": [special(start, CLIP_START), special(end, CLIP_END)],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"}, {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "}, {"type": "Lowercase"}]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex":
                "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+"},
             "behavior": "Removed", "invert": true},
            byte_level]},
        "post_processor": {"type": "RobertaProcessing", "sep": [CLIP_END, end], "cls": [CLIP_START, start],
                           "trim_offsets": false, "add_prefix_space": false},
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": CLIP_END, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "</w>", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges},
    }))
}

/// The slow-tokenizer files (`vocab.json`, `merges.txt`) of a CLIP `tokenizer.json`: what
/// FLUX.1's `tokenizer/` folder ships in its place (the inverse of [`clip_tokenizer_json`]).
pub fn clip_slow_files(tokenizer_json: &[u8]) -> Result<(String, String), String> {
    let spec: serde_json::Value = serde_json::from_slice(tokenizer_json).map_err(|e| format!("tokenizer.json is not JSON ({e})"))?;
    let model = &spec["model"];
    let vocab = model["vocab"].as_object().ok_or("tokenizer.json: no BPE `model.vocab`")?;
    let mut merges = String::from("#version: 0.2\n");
    for pair in model["merges"].as_array().ok_or("tokenizer.json: no BPE `model.merges`")? {
        // Older files write a merge as "a b", newer ones as ["a", "b"].
        let line = match pair {
            serde_json::Value::String(s) => s.clone(),
            other => other.as_array().map(|p| p.iter().filter_map(|t| t.as_str()).collect::<Vec<_>>().join(" ")).unwrap_or_default(),
        };
        merges.push_str(&line);
        merges.push('\n');
    }
    Ok((serde_json::to_string(vocab).map_err(|e| e.to_string())?, merges))
}

/// A tokenizer that gives every text exactly `max_length` ids.
#[derive(Debug)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    max_length: usize,
}

impl TextTokenizer {
    /// Loads `tokenizer.json`; texts are truncated to `max_length` ids (keeping the special
    /// tokens the post-processor adds) and padded with `pad_token`.
    pub fn from_file(path: &Path, max_length: usize, pad_token: &str) -> Result<Self, TokenizerError> {
        let inner =
            tokenizers::Tokenizer::from_file(path).map_err(|e| TokenizerError::Load { path: path.into(), message: e.to_string() })?;
        Self::configure(inner, path, max_length, pad_token)
    }

    /// Like [`from_file`](Self::from_file), from the bytes of a `tokenizer.json`.
    pub fn from_bytes(bytes: &[u8], max_length: usize, pad_token: &str) -> Result<Self, TokenizerError> {
        Self::from_bytes_at(bytes, Path::new("<built-in tokenizer>"), max_length, pad_token)
    }

    /// [`from_bytes`](Self::from_bytes), naming `path` in errors.
    fn from_bytes_at(bytes: &[u8], path: &Path, max_length: usize, pad_token: &str) -> Result<Self, TokenizerError> {
        let inner =
            tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| TokenizerError::Load { path: path.into(), message: e.to_string() })?;
        Self::configure(inner, path, max_length, pad_token)
    }

    fn configure(mut inner: tokenizers::Tokenizer, path: &Path, max_length: usize, pad_token: &str) -> Result<Self, TokenizerError> {
        let pad_id =
            inner.token_to_id(pad_token).ok_or_else(|| TokenizerError::NoPadToken { path: path.into(), token: pad_token.into() })?;
        inner
            .with_truncation(Some(tokenizers::TruncationParams { max_length, ..Default::default() }))
            .map_err(|e| TokenizerError::Load { path: path.into(), message: e.to_string() })?;
        inner.with_padding(Some(tokenizers::PaddingParams {
            strategy: tokenizers::PaddingStrategy::Fixed(max_length),
            pad_id,
            pad_token: pad_token.to_string(),
            ..Default::default()
        }));
        Ok(Self { inner, max_length })
    }

    /// CLIP's tokenizer: 77 ids, padded with `<|endoftext|>` (as `openai/clip-vit-large-patch14`).
    pub fn clip(path: &Path) -> Result<Self, TokenizerError> {
        Self::from_file(path, 77, CLIP_END)
    }

    /// CLIP's tokenizer from a tokenizer folder: `tokenizer.json` when the folder has one, else
    /// `vocab.json` + `merges.txt` (as FLUX.1's `tokenizer/` ships it). Texts get `max_length` ids.
    pub fn clip_dir(dir: &Path, max_length: usize) -> Result<Self, TokenizerError> {
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            return Self::from_file(&json, max_length, CLIP_END);
        }
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|e| TokenizerError::Load {
                path: path.into(),
                message: format!("{e}; a CLIP tokenizer folder holds tokenizer.json, or vocab.json and merges.txt"),
            })
        };
        let vocab_text = read(&vocab)?;
        let spec = clip_tokenizer_json(&vocab_text, &read(&merges)?).map_err(|message| TokenizerError::Load { path: vocab, message })?;
        Self::from_bytes_at(spec.to_string().as_bytes(), dir, max_length, CLIP_END)
    }

    /// T5's tokenizer as FLUX uses it: 512 ids, padded with `<pad>`.
    pub fn t5(path: &Path, max_length: usize) -> Result<Self, TokenizerError> {
        Self::from_file(path, max_length, "<pad>")
    }

    /// CLIP's tokenizer from `tokenizer.json` bytes.
    pub fn clip_from_bytes(bytes: &[u8]) -> Result<Self, TokenizerError> {
        Self::from_bytes(bytes, 77, CLIP_END)
    }

    /// T5's tokenizer (512 ids) from `tokenizer.json` bytes.
    pub fn t5_from_bytes(bytes: &[u8]) -> Result<Self, TokenizerError> {
        Self::from_bytes(bytes, 512, "<pad>")
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The ids of each text, each exactly `max_length` long.
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>, TokenizerError> {
        let encodings = self.inner.encode_batch(texts.to_vec(), true).map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(encodings.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_ids_match_transformers() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/clip_text/tokenizer");
        let expected: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
        let tok = TextTokenizer::clip(&dir.join("tokenizer.json")).unwrap();
        let prompts: Vec<&str> = expected["prompts"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
        let ids = tok.encode(&prompts).unwrap();
        for (i, row) in ids.iter().enumerate() {
            let want: Vec<u32> = expected["input_ids"][i].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            assert_eq!(row, &want, "prompt {:?}", prompts[i]);
        }
        let long = "a cat ".repeat(100);
        let ids = tok.encode(&[long.as_str()]).unwrap();
        assert_eq!(ids[0].len(), 77);
        assert_eq!(*ids[0].last().unwrap(), tok.inner.token_to_id("<|endoftext|>").unwrap(), "truncation keeps the end token");
    }

    #[test]
    fn clip_from_vocab_and_merges_gives_the_ids_of_tokenizer_json() {
        let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/clip_text/tokenizer");
        let expected: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture.join("expected.json")).unwrap()).unwrap();
        let (vocab, merges) = clip_slow_files(&std::fs::read(fixture.join("tokenizer.json")).unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vocab.json"), vocab).unwrap();
        std::fs::write(dir.path().join("merges.txt"), merges).unwrap();
        let slow = TextTokenizer::clip_dir(dir.path(), 77).unwrap();
        let fast = TextTokenizer::clip(&fixture.join("tokenizer.json")).unwrap();
        let mut prompts: Vec<&str> = expected["prompts"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
        let long = "The cat's toy, a RED ball; 3 dogs!  don't  stop\tnow ".repeat(8);
        prompts.extend(["Ünïcödé café", "<|endoftext|> inside", long.as_str()]);
        let ids = slow.encode(&prompts).unwrap();
        assert_eq!(ids, fast.encode(&prompts).unwrap());
        for (i, row) in ids.iter().take(expected["input_ids"].as_array().unwrap().len()).enumerate() {
            let want: Vec<u32> = expected["input_ids"][i].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            assert_eq!(row, &want, "prompt {:?}", prompts[i]);
        }
        std::fs::remove_file(dir.path().join("merges.txt")).unwrap();
        let err = TextTokenizer::clip_dir(dir.path(), 77).unwrap_err().to_string();
        assert!(err.contains("merges.txt") && err.contains("vocab.json and merges.txt"), "{err}");
    }

    #[test]
    fn t5_ids_match_transformers() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/t5/tokenizer");
        let expected: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
        let tok = TextTokenizer::t5(&dir.join("tokenizer.json"), expected["max_length"].as_u64().unwrap() as usize).unwrap();
        let prompts: Vec<&str> = expected["prompts"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
        for (i, row) in tok.encode(&prompts).unwrap().iter().enumerate() {
            let want: Vec<u32> = expected["input_ids"][i].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            assert_eq!(row, &want, "prompt {:?}", prompts[i]);
        }
    }

    #[test]
    fn missing_file_is_named() {
        let err = TextTokenizer::clip(Path::new("no/tokenizer.json")).unwrap_err().to_string();
        assert!(err.contains("no/tokenizer.json"), "{err}");
    }
}
