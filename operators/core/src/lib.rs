//! unoflow's compute operators: the UNO method's steps as [`Operator`]s, on the models of
//! `unoflow-models`.
//!
//! The contract they implement (the [`Operator`] trait, typed parameters, columns, row ids,
//! seeded draws, devices) is the burn-free crate `unoflow-api`, re-exported here so operators
//! name it as `crate::…`. Nothing here knows DAG files, workspaces or scheduling.

pub mod curation;
pub mod embed;
pub mod evaluate;
pub mod generate;
/// Image columns' decoding and encoding (the `unoflow-image` crate, shared with the engine).
pub use unoflow_image as image_io;
pub mod image_signature;
pub mod image_similarity;
pub mod metrics;
pub mod near_duplicates;
pub mod preprocess;
pub mod sleep;
pub mod thumbnail;
pub mod training;

pub use unoflow_api::{
    Configured, Device, Environment, ExecContext, OpError, OpSpec, Operator, ParamSpec, ParamType, ParamValue, Params, PartitionOutput,
    PartitionProcessor, Resource, Result, RowError, RowMapping, choice, columns, draws, params, rowid, rows,
};

/// Operator modules name the contract's modules as `crate::operator`.
pub(crate) use unoflow_api as operator;

/// Every operator this crate provides, in the order `unoflow ops` lists them.
pub fn builtin_operators() -> Vec<std::sync::Arc<dyn Operator>> {
    use std::sync::Arc;
    let builtin: Vec<Arc<dyn Operator>> = vec![
        Arc::new(thumbnail::Thumbnail),
        Arc::new(image_similarity::ImageSimilarity),
        Arc::new(curation::vlm::subjects::LlmSubjects),
        Arc::new(curation::diptych_prompts::DiptychPrompts),
        Arc::new(curation::incontext_generate::IncontextGenerate),
        Arc::new(curation::split_diptych::SplitDiptych),
        Arc::new(curation::dino_filter::DinoFilter),
        Arc::new(curation::vlm::score::VlmScore),
        Arc::new(curation::vlm::detect::VlmDetect),
        Arc::new(curation::dedup::Dedup),
        Arc::new(curation::contamination::Contamination),
        Arc::new(training::train_lora::TrainLora),
        Arc::new(training::regenerate_ref::RegenerateRef),
        Arc::new(evaluate::Evaluate),
        Arc::new(sleep::Sleep),
    ];
    builtin.into_iter().chain(unoflow_external::operators()).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// `op`'s defaults, a plausible value for each required parameter, then `overrides`.
    fn params(op: &dyn Operator, overrides: &[(&str, ParamValue)]) -> Params {
        let mut p = Params::new();
        for spec in &op.spec().params {
            let value = spec.default.clone().unwrap_or_else(|| match spec.ty {
                ParamType::Int { min, .. } => ParamValue::Int(min.unwrap_or(1)),
                ParamType::Table => ParamValue::Table([("out".to_string(), "float64".into())].into()),
                ParamType::Command => ["true"].into(),
                _ if spec.name == "endpoint" => "http://127.0.0.1:8000/v1".into(),
                _ => "x".into(),
            });
            p.insert(spec.name, value);
        }
        for (name, value) in overrides {
            p.insert(*name, value.clone());
        }
        p
    }

    fn operator(name: &str) -> Arc<dyn Operator> {
        builtin_operators().into_iter().find(|op| op.spec().name == name).expect("a builtin operator")
    }

    /// The parameter a configuration error names.
    fn rejected(op: &str, overrides: &[(&str, ParamValue)]) -> String {
        let op = operator(op);
        match op.configure(&params(op.as_ref(), overrides)) {
            Err(OpError::Param { name, .. }) => name,
            Err(e) => panic!("not a parameter error: {e}"),
            Ok(_) => panic!("{overrides:?} accepted"),
        }
    }

    #[test]
    fn every_operator_reads_every_value_its_spec_admits() {
        for op in builtin_operators() {
            let name = op.spec().name;
            op.configure(&params(op.as_ref(), &[])).unwrap_or_else(|e| panic!("{name}: {e}"));
            // Every word of every choice parameter reads into its enum.
            for spec in &op.spec().params {
                if let ParamType::Choice(words) = spec.ty {
                    for word in words {
                        // A choice that needs another parameter gets it.
                        let needs: &[(&str, ParamValue)] = match (name, *word) {
                            ("dedup", "semantic") => &[("weights", ParamValue::Str("x".into()))],
                            _ => &[],
                        };
                        let p = params(op.as_ref(), &[&[(spec.name, (*word).into())], needs].concat());
                        op.configure(&p).unwrap_or_else(|e| panic!("{name}.{} = {word:?}: {e}", spec.name));
                    }
                }
            }
        }
    }

    #[test]
    fn values_only_the_operator_can_judge_fail_configuration_naming_the_parameter() {
        assert_eq!(rejected("diptych_prompts", &[("resolutions", ["1024x1000"].into())]), "resolutions");
        assert_eq!(rejected("diptych_prompts", &[("resolutions", ParamValue::List(Vec::new()))]), "resolutions");
        for op in ["vlm_score", "vlm_detect", "llm_subjects"] {
            assert_eq!(rejected(op, &[("endpoint", "127.0.0.1:8000/v1".into())]), "endpoint", "{op}");
        }
        let semantic = ("method", ParamValue::from("semantic"));
        assert_eq!(rejected("dedup", std::slice::from_ref(&semantic)), "weights");
        assert_eq!(rejected("dedup", &[semantic, ("weights", "x".into()), ("embedding", "e".into())]), "embedding");
        assert_eq!(rejected("dedup", &[("weights", "x".into())]), "weights");
        assert_eq!(rejected("dedup", &[("method", "exact".into()), ("embedding", "e".into())]), "embedding");
        for op in ["evaluate", "regenerate_ref"] {
            assert_eq!(rejected(op, &[("width", 520i64.into())]), "width", "{op}");
            assert_eq!(rejected(op, &[("height", 100i64.into())]), "height", "{op}");
        }
    }

    #[test]
    fn optional_columns_are_required_only_when_named() {
        let op = operator("vlm_score");
        let columns = |overrides: &[(&str, ParamValue)]| -> Vec<String> {
            let configured = op.configure(&params(op.as_ref(), overrides)).expect("configures");
            configured.required_columns().remove(0).into_iter().map(|c| c.name).collect()
        };
        assert_eq!(columns(&[]), ["ref_image", "target_image"]);
        assert_eq!(columns(&[("subject", "subject1".into())]), ["ref_image", "target_image", "subject1"]);
    }
}
