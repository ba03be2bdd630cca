//! Tolerant readers of model answers: JSON when the model wrote JSON (in a code fence or
//! not), the paper's `[Part i]: [score]` lines when it did not.

use serde_json::Value;

/// The first JSON value embedded in `text` (an object or an array), skipping prose and code
/// fences around it.
pub fn embedded_json(text: &str) -> Option<Value> {
    for (start, open) in text.char_indices().filter(|(_, c)| *c == '{' || *c == '[') {
        let close = if open == '{' { '}' } else { ']' };
        for (end, _) in text[start..].char_indices().rev().filter(|(_, c)| *c == close) {
            if let Ok(v) = serde_json::from_str::<Value>(&text[start..start + end + 1]) {
                return Some(v);
            }
        }
    }
    None
}

/// Per-part scores (integers 0–4) from a step-3 answer.
pub fn part_scores(answer: &str) -> Result<Vec<(String, i32)>, String> {
    let parts = match embedded_json(answer) {
        Some(json) => scores_from_json(&json)?,
        None => Vec::new(),
    };
    let parts = if parts.is_empty() { scores_from_lines(answer)? } else { parts };
    if parts.is_empty() {
        return Err(format!("no part scores in the answer: {:?}", super::client::clip(answer, 200)));
    }
    Ok(parts)
}

fn score_value(part: &str, v: &Value) -> Result<i32, String> {
    let x = v
        .as_f64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        .ok_or_else(|| format!("part {part:?}: score {v} is not a number"))?;
    checked_score(part, x)
}

fn checked_score(part: &str, x: f64) -> Result<i32, String> {
    if x.fract() != 0.0 || !(0.0..=4.0).contains(&x) {
        return Err(format!("part {part:?}: score {x} is not an integer in 0–4"));
    }
    Ok(x as i32)
}

/// `{"parts": [{"part": …, "score": …}]}`, `{"scores": {part: score}}` or `{part: score, …}`.
fn scores_from_json(json: &Value) -> Result<Vec<(String, i32)>, String> {
    let list = json.get("parts").or_else(|| json.get("scores")).unwrap_or(json);
    match list {
        Value::Array(items) => items
            .iter()
            .filter_map(|item| {
                let name = item.get("part").or_else(|| item.get("name")).and_then(Value::as_str)?;
                Some(
                    item.get("score")
                        .map_or_else(|| Err(format!("part {name:?} has no score")), |s| score_value(name, s))
                        .map(|s| (name.to_string(), s)),
                )
            })
            .collect(),
        Value::Object(map) => {
            map.iter().filter(|(_, v)| v.is_number() || v.is_string()).map(|(k, v)| Ok((k.clone(), score_value(k, v)?))).collect()
        }
        _ => Ok(Vec::new()),
    }
}

/// Lines such as `[Part 1] Handle: [3]`, `Handle: 3`, `- **Lid**: 4/4`.
fn scores_from_lines(text: &str) -> Result<Vec<(String, i32)>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((name, value)) = line.rsplit_once(':') else { continue };
        let name = part_name(name);
        let digits: String =
            value.trim().trim_start_matches(['[', '*', ' ']).chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
        let Ok(score) = digits.parse::<f64>() else { continue };
        if name.is_empty() || name.len() > 120 {
            continue;
        }
        out.push((name.to_string(), checked_score(name, score)?));
    }
    Ok(out)
}

/// `[Part 1] Handle` → `Handle`, `[Handle]` → `Handle`, `- **Lid**` → `Lid`.
fn part_name(raw: &str) -> &str {
    let markup = |c: char| c == '-' || c == '*' || c == '#' || c.is_whitespace();
    let name = raw.trim_matches(markup);
    let name = match name.strip_prefix('[').and_then(|rest| rest.split_once(']')) {
        Some((inside, after)) if after.trim_matches(markup).is_empty() => inside,
        Some((_, after)) => after,
        None => name,
    };
    name.trim_matches(markup)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_structured_fenced_and_line_answers() {
        let structured = r#"{"parts": [{"part": "handle", "score": 4}, {"part": "logo", "score": 3}]}"#;
        assert_eq!(part_scores(structured).unwrap(), vec![("handle".into(), 4), ("logo".into(), 3)]);
        let fenced = "Here you go:\n```json\n{\"scores\": {\"lid\": 2}}\n```";
        assert_eq!(part_scores(fenced).unwrap(), vec![("lid".into(), 2)]);
        let lines = "Scores:\n[Part 1] Handle: [3]\n- **Lid**: 4\nOverall the mug matches.";
        assert_eq!(part_scores(lines).unwrap(), vec![("Handle".into(), 3), ("Lid".into(), 4)]);
    }

    #[test]
    fn rejects_out_of_range_and_empty_answers() {
        assert!(part_scores(r#"{"parts": [{"part": "x", "score": 7}]}"#).unwrap_err().contains("0–4"));
        assert!(part_scores("I cannot compare these images.").unwrap_err().contains("no part scores"));
        assert!(part_scores("{ not json").unwrap_err().contains("no part scores"));
    }
}
