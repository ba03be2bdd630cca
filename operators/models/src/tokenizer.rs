//! Text tokenizers from the `tokenizer.json` files model folders ship (CLIP's BPE, T5's
//! SentencePiece-unigram), padded and truncated to the fixed lengths FLUX and CLIP use.

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
        let path = PathBuf::from("<built-in tokenizer>");
        let inner =
            tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| TokenizerError::Load { path: path.clone(), message: e.to_string() })?;
        Self::configure(inner, &path, max_length, pad_token)
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
        Self::from_file(path, 77, "<|endoftext|>")
    }

    /// T5's tokenizer as FLUX uses it: 512 ids, padded with `<pad>`.
    pub fn t5(path: &Path, max_length: usize) -> Result<Self, TokenizerError> {
        Self::from_file(path, max_length, "<pad>")
    }

    /// CLIP's tokenizer from `tokenizer.json` bytes.
    pub fn clip_from_bytes(bytes: &[u8]) -> Result<Self, TokenizerError> {
        Self::from_bytes(bytes, 77, "<|endoftext|>")
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
