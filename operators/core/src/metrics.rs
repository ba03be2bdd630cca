//! DreamBench metrics (UNO paper §6.1, DreamBooth protocol): DINO (cosine of DINO ViT-S/16 CLS
//! embeddings, generated vs reference), CLIP-I (cosine of CLIP image embeddings) and CLIP-T
//! (cosine of CLIP image and prompt embeddings, not multiplied by 100, so UNO's 0.304 is
//! comparable). With several references (multi-subject), the image scores are the mean over
//! the references.

use image::DynamicImage;

use crate::Result;
use crate::embed::{ImageEncoder, TextEncoder, cosine};

/// The scores of one generated image.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Scores {
    pub dino: f32,
    pub clip_i: f32,
    pub clip_t: f32,
}

/// One generated image to score: its references and its prompt.
#[derive(Debug, Clone)]
pub struct Sample<'a> {
    pub generated: &'a DynamicImage,
    pub references: Vec<&'a DynamicImage>,
    pub prompt: &'a str,
}

/// The encoders the metrics need.
pub struct Scorer<'a> {
    pub dino: &'a dyn ImageEncoder,
    pub clip_image: &'a dyn ImageEncoder,
    pub clip_text: &'a dyn TextEncoder,
    /// Images per forward pass.
    pub batch_size: usize,
}

impl std::fmt::Debug for Scorer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scorer").field("batch_size", &self.batch_size).finish_non_exhaustive()
    }
}

impl Scorer<'_> {
    /// Scores every sample (in batches).
    pub fn score(&self, samples: &[Sample<'_>]) -> Result<Vec<Scores>> {
        let mut out = Vec::with_capacity(samples.len());
        for chunk in samples.chunks(self.batch_size.max(1)) {
            let mut images: Vec<DynamicImage> = Vec::new();
            let mut spans = Vec::with_capacity(chunk.len());
            for s in chunk {
                let start = images.len();
                images.push(s.generated.clone());
                images.extend(s.references.iter().map(|r| (*r).clone()));
                spans.push(start..images.len());
            }
            let dino = self.dino.embed(&images)?;
            let clip = self.clip_image.embed(&images)?;
            let prompts: Vec<&str> = chunk.iter().map(|s| s.prompt).collect();
            let texts = self.clip_text.embed_texts(&prompts)?;
            for (span, text) in spans.into_iter().zip(&texts) {
                let (g, refs) = (span.start, span.start + 1..span.end);
                let mean = |e: &[Vec<f32>]| {
                    let n = refs.len().max(1) as f32;
                    refs.clone().map(|r| cosine(&e[g], &e[r])).sum::<f32>() / n
                };
                out.push(Scores { dino: mean(&dino), clip_i: mean(&clip), clip_t: cosine(&clip[g], text) });
            }
        }
        Ok(out)
    }
}

/// The mean of each metric.
pub fn mean(scores: &[Scores]) -> Scores {
    let n = scores.len().max(1) as f32;
    Scores {
        dino: scores.iter().map(|s| s.dino).sum::<f32>() / n,
        clip_i: scores.iter().map(|s| s.clip_i).sum::<f32>() / n,
        clip_t: scores.iter().map(|s| s.clip_t).sum::<f32>() / n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An encoder that embeds an image as its mean colour, a text as its length.
    struct Colour;
    impl ImageEncoder for Colour {
        fn embed(&self, images: &[DynamicImage]) -> Result<Vec<Vec<f32>>> {
            Ok(images
                .iter()
                .map(|i| {
                    let rgb = i.to_rgb8();
                    let n = rgb.pixels().len() as f32;
                    (0..3).map(|c| rgb.pixels().map(|p| p[c] as f32).sum::<f32>() / n + 1.0).collect()
                })
                .collect())
        }
    }
    impl TextEncoder for Colour {
        fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
            Ok(texts.iter().map(|t| vec![t.len() as f32, 1.0, 1.0]).collect())
        }
    }

    #[test]
    fn identical_images_score_one_and_references_average() {
        let red = DynamicImage::ImageRgb8(image::RgbImage::from_pixel(4, 4, image::Rgb([255, 0, 0])));
        let blue = DynamicImage::ImageRgb8(image::RgbImage::from_pixel(4, 4, image::Rgb([0, 0, 255])));
        let scorer = Scorer { dino: &Colour, clip_image: &Colour, clip_text: &Colour, batch_size: 2 };
        let samples = [
            Sample { generated: &red, references: vec![&red], prompt: "a red square" },
            Sample { generated: &red, references: vec![&red, &blue], prompt: "x" },
            Sample { generated: &blue, references: vec![&red], prompt: "y" },
        ];
        let s = scorer.score(&samples).unwrap();
        assert!((s[0].dino - 1.0).abs() < 1e-6 && (s[0].clip_i - 1.0).abs() < 1e-6);
        let red_blue = cosine(&[256.0, 1.0, 1.0], &[1.0, 1.0, 256.0]);
        assert!((s[1].dino - (1.0 + red_blue) / 2.0).abs() < 1e-5);
        assert!((s[2].clip_i - red_blue).abs() < 1e-5);
        let m = mean(&s);
        assert!((m.dino - (s[0].dino + s[1].dino + s[2].dino) / 3.0).abs() < 1e-6);
    }
}
