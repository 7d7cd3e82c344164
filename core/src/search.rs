//! Fielded BM25 (BM25F) search over registered tools: name, manual, tags,
//! description and parameter names, each weighted and length-normalised on its own.
//!
//! The index is split into one immutable segment per manual, built when the manual
//! registers, so a registration never rebuilds other manuals' postings and readers
//! share segments through `Arc`s. Corpus statistics (document count, average length,
//! document frequency) are summed across segments at query time, which keeps scores
//! identical to one global index.
//!
//! Terms are lower-cased, split on punctuation and camelCase, de-pluralised, and
//! stop words dropped. "repo" and "repository" meet at a lower weight than an
//! exact match: a query term also matches the vocabulary terms it prefixes (a
//! range of the sorted vocabulary) and the terms that prefix it.

use std::collections::HashMap;

use crate::manual::Tool;

const K1: f32 = 1.2;
const PREFIX_MIN: usize = 4;
const PREFIX_WEIGHT: f32 = 0.4;

/// The fields of a tool document, with how much a term in each counts and how
/// strongly its length is normalised (BM25F's per-field `b`).
const FIELDS: usize = 5;
const F_NAME: usize = 0;
const F_MANUAL: usize = 1;
const F_TAG: usize = 2;
const F_DESCRIPTION: usize = 3;
const F_PARAM: usize = 4;
const WEIGHT: [f32; FIELDS] = [3.0, 0.5, 2.0, 1.0, 1.5];
const B: [f32; FIELDS] = [0.5, 0.0, 0.3, 0.75, 0.75];

const STOP_WORDS: [&str; 24] = [
    "a", "an", "the", "for", "of", "to", "in", "on", "by", "with", "and", "or", "from", "is", "are", "be", "my", "me",
    "i", "it", "this", "that", "at", "as",
];

type FieldCounts = [f32; FIELDS];

type Postings = Vec<(u32, FieldCounts)>;

/// Postings of one manual's tools. Document ids are indices into the manual's tool
/// list. The vocabulary is sorted so exact terms are a binary search and the terms
/// starting with a query term (`repository` for `repo`) one contiguous range.
#[derive(Debug, Default)]
pub struct Segment {
    vocabulary: Vec<(Box<str>, Postings)>,
    field_len: Vec<FieldCounts>,
    total_len: FieldCounts,
}

impl Segment {
    pub fn build<'a>(manual_name: &str, tools: impl IntoIterator<Item = &'a Tool>) -> Segment {
        let mut seg = Segment::default();
        let mut terms = Terms::default();
        // The manual's name is the same field of every document: its terms once.
        let mut manual_terms = Vec::new();
        for_each_token(manual_name, &mut String::new(), |t| manual_terms.push(terms.id(t)));
        let mut word = String::new();
        for (doc, tool) in tools.into_iter().enumerate() {
            let doc = doc as u32;
            let mut len: FieldCounts = [0.0; FIELDS];
            terms.doc_terms.clear();
            for &id in &manual_terms {
                len[F_MANUAL] += 1.0;
                terms.count(doc, id, F_MANUAL);
            }
            let mut add = |terms: &mut Terms, text: &str, field: usize| {
                for_each_token(text, &mut word, |t| {
                    len[field] += 1.0;
                    let id = terms.id(t);
                    terms.count(doc, id, field);
                });
            };
            add(&mut terms, &tool.name, F_NAME);
            for tag in &tool.tags {
                add(&mut terms, tag, F_TAG);
            }
            add(&mut terms, &tool.description, F_DESCRIPTION);
            if let Some(props) = tool.inputs.get("properties").and_then(|p| p.as_object()) {
                for name in props.keys() {
                    add(&mut terms, name, F_PARAM);
                }
            }
            for (total, l) in seg.total_len.iter_mut().zip(len) {
                *total += l;
            }
            seg.field_len.push(len);
            for &(id, counts) in &terms.doc_terms {
                terms.postings[id as usize].push((doc, counts));
            }
        }
        seg.vocabulary = terms
            .ids
            .into_iter()
            .map(|(term, id)| (term, std::mem::take(&mut terms.postings[id as usize])))
            .filter(|(_, postings)| !postings.is_empty())
            .collect();
        seg.vocabulary.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        seg
    }

    fn exact(&self, term: &str) -> Option<&Postings> {
        self.vocabulary.binary_search_by(|(t, _)| (**t).cmp(term)).ok().map(|i| &self.vocabulary[i].1)
    }

    /// Postings of the terms that start with `prefix` and are longer than it.
    fn extensions<'s>(&'s self, prefix: &'s str) -> impl Iterator<Item = &'s Postings> + 's {
        let start = self.vocabulary.partition_point(|(t, _)| **t <= *prefix);
        self.vocabulary[start..].iter().take_while(move |(t, _)| t.starts_with(prefix)).map(|(_, p)| p)
    }

    pub fn len(&self) -> usize {
        self.field_len.len()
    }

    pub fn is_empty(&self) -> bool {
        self.field_len.is_empty()
    }
}

/// Term ids and postings while a segment is built, and the terms of the document
/// being read (each with where it sits in `doc_terms`, so counting is one lookup).
#[derive(Default)]
struct Terms {
    ids: HashMap<Box<str>, u32>,
    postings: Vec<Postings>,
    /// Per term id: (document + 1, index in `doc_terms`) of its last occurrence.
    last: Vec<(u32, u32)>,
    doc_terms: Vec<(u32, FieldCounts)>,
}

impl Terms {
    fn id(&mut self, term: &str) -> u32 {
        if let Some(&id) = self.ids.get(term) {
            return id;
        }
        let id = self.postings.len() as u32;
        self.ids.insert(term.into(), id);
        self.postings.push(Vec::new());
        self.last.push((0, 0));
        id
    }

    fn count(&mut self, doc: u32, id: u32, field: usize) {
        let last = &mut self.last[id as usize];
        if last.0 != doc + 1 {
            *last = (doc + 1, self.doc_terms.len() as u32);
            self.doc_terms.push((id, [0.0; FIELDS]));
        }
        self.doc_terms[last.1 as usize].1[field] += 1.0;
    }
}

/// One query term with the weight its matches count for.
struct QueryTerm {
    key: String,
    weight: f32,
    /// Match the terms that extend `key` ("repository" for "repo") instead of `key` itself.
    extend: bool,
}

fn query_terms(query: &str) -> Vec<QueryTerm> {
    let mut out: Vec<QueryTerm> = Vec::new();
    for term in tokens(query) {
        // Documents whose own term is a prefix of this one ("repo" for "repository").
        for len in PREFIX_MIN..term.len() {
            if term.is_char_boundary(len) {
                out.push(QueryTerm { key: term[..len].to_string(), weight: PREFIX_WEIGHT, extend: false });
            }
        }
        if term.len() >= PREFIX_MIN {
            out.push(QueryTerm { key: term.clone(), weight: PREFIX_WEIGHT, extend: true });
        }
        out.push(QueryTerm { key: term, weight: 1.0, extend: false });
    }
    out
}

/// Score every document of `segments` against `query` with BM25F. Returns
/// (segment, doc, score) for documents with a positive score, unsorted.
pub fn score(segments: &[&Segment], query: &str) -> Vec<(usize, u32, f32)> {
    let terms = query_terms(query);
    if terms.is_empty() {
        return Vec::new();
    }
    let n_docs: usize = segments.iter().map(|s| s.len()).sum();
    if n_docs == 0 {
        return Vec::new();
    }
    let mut avg_len: FieldCounts = [0.0; FIELDS];
    for s in segments {
        for (avg, total) in avg_len.iter_mut().zip(s.total_len) {
            *avg += total;
        }
    }
    for avg in &mut avg_len {
        *avg = (*avg / n_docs as f32).max(f32::EPSILON);
    }
    // Dense accumulators: one f32 per document beats hashing (seg, doc) pairs.
    let mut acc: Vec<Vec<f32>> = segments.iter().map(|s| vec![0.0; s.len()]).collect();
    for qt in &terms {
        let lists: Vec<(usize, &Postings)> = if qt.extend {
            segments.iter().enumerate().flat_map(|(i, s)| s.extensions(&qt.key).map(move |p| (i, p))).collect()
        } else {
            segments.iter().enumerate().filter_map(|(i, s)| s.exact(&qt.key).map(|p| (i, p))).collect()
        };
        let df: usize = lists.iter().map(|(_, p)| p.len()).sum();
        if df == 0 {
            continue;
        }
        let idf = (1.0 + (n_docs as f32 - df as f32 + 0.5) / (df as f32 + 0.5)).ln();
        for (seg, postings) in lists {
            let field_len = &segments[seg].field_len;
            for (doc, counts) in postings {
                let lens = &field_len[*doc as usize];
                let mut tf = 0.0;
                for f in 0..FIELDS {
                    if counts[f] > 0.0 {
                        tf += WEIGHT[f] * counts[f] / (1.0 - B[f] + B[f] * lens[f] / avg_len[f]);
                    }
                }
                acc[seg][*doc as usize] += qt.weight * idf * tf * (K1 + 1.0) / (tf + K1);
            }
        }
    }
    let mut hits = Vec::new();
    for (seg, docs) in acc.iter().enumerate() {
        for (doc, &score) in docs.iter().enumerate() {
            if score > 0.0 {
                hits.push((seg, doc as u32, score));
            }
        }
    }
    hits
}

/// Lower-case terms of `text`: split on anything not alphanumeric and on camelCase
/// boundaries, plural `s` removed, stop words dropped.
pub fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for_each_token(text, &mut String::new(), |t| out.push(t.to_string()));
    out
}

/// `tokens` without allocating a string per term: each term is handed to `f`, built
/// in `word` (a buffer reused across calls).
fn for_each_token(text: &str, word: &mut String, mut f: impl FnMut(&str)) {
    word.clear();
    let mut flush = |word: &mut String| {
        if !word.is_empty() {
            normalize(word);
            if !STOP_WORDS.contains(&word.as_str()) {
                f(word);
            }
            word.clear();
        }
    };
    let mut prev_lower = false;
    for c in text.chars() {
        if c.is_ascii() {
            if c.is_ascii_alphanumeric() {
                if prev_lower && c.is_ascii_uppercase() {
                    flush(word);
                }
                word.push(c.to_ascii_lowercase());
            } else {
                flush(word);
            }
            prev_lower = c.is_ascii_lowercase();
        } else {
            if c.is_alphanumeric() {
                if prev_lower && c.is_uppercase() {
                    flush(word);
                }
                word.extend(c.to_lowercase());
            } else {
                flush(word);
            }
            prev_lower = c.is_lowercase();
        }
    }
    flush(word);
}

/// A light English stemmer, in place: enough to make "issues"/"issue" and
/// "repositories"/"repository" meet, nothing that changes meaning.
fn normalize(word: &mut String) {
    let n = word.len();
    if n > 4 && word.ends_with("ies") {
        word.truncate(n - 3);
        word.push('y');
    } else if n > 4
        && (word.ends_with("sses") || word.ends_with("xes") || word.ends_with("ches") || word.ends_with("shes"))
    {
        word.truncate(n - 2);
    } else if n > 3 && word.ends_with('s') && !word.ends_with("ss") && !word.ends_with("us") && !word.ends_with("is") {
        word.truncate(n - 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_splits_and_normalizes() {
        assert_eq!(tokens("issues/list-for-repo"), ["issue", "list", "repo"]);
        assert_eq!(tokens("getUserRepositories"), ["get", "user", "repository"]);
        assert_eq!(tokens("List the boxes, status"), ["list", "box", "status"]);
        assert!(tokens("  ,, ").is_empty());
    }

    /// The tokenizer and segment builder as first written (a `String` per term, a map
    /// per document): the faster ones must give the same terms and postings.
    fn reference_tokens(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut word = String::new();
        let mut prev: Option<char> = None;
        let flush = |word: &mut String, out: &mut Vec<String>| {
            if !word.is_empty() {
                let mut w = word.clone();
                normalize(&mut w);
                if !STOP_WORDS.contains(&w.as_str()) {
                    out.push(w);
                }
                word.clear();
            }
        };
        for c in text.chars() {
            if c.is_alphanumeric() {
                if prev.is_some_and(|p| p.is_lowercase() && c.is_uppercase()) {
                    flush(&mut word, &mut out);
                }
                word.extend(c.to_lowercase());
            } else {
                flush(&mut word, &mut out);
            }
            prev = Some(c);
        }
        flush(&mut word, &mut out);
        out
    }

    fn reference_build(manual_name: &str, tools: &[Tool]) -> Segment {
        let mut seg = Segment::default();
        let mut postings: HashMap<Box<str>, Postings> = HashMap::new();
        for (doc, tool) in tools.iter().enumerate() {
            let mut tf: HashMap<String, FieldCounts> = HashMap::new();
            let mut len: FieldCounts = [0.0; FIELDS];
            let mut add = |text: &str, field: usize| {
                for term in reference_tokens(text) {
                    len[field] += 1.0;
                    tf.entry(term).or_default()[field] += 1.0;
                }
            };
            add(&tool.name, F_NAME);
            add(manual_name, F_MANUAL);
            tool.tags.iter().for_each(|t| add(t, F_TAG));
            add(&tool.description, F_DESCRIPTION);
            if let Some(props) = tool.inputs.get("properties").and_then(|p| p.as_object()) {
                props.keys().for_each(|k| add(k, F_PARAM));
            }
            for (total, l) in seg.total_len.iter_mut().zip(len) {
                *total += l;
            }
            seg.field_len.push(len);
            for (term, counts) in tf {
                postings.entry(term.into_boxed_str()).or_default().push((doc as u32, counts));
            }
        }
        seg.vocabulary = postings.into_iter().collect();
        seg.vocabulary.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        seg
    }

    fn tool(name: &str, description: &str, tags: &[&str], params: &[&str]) -> Tool {
        let props: serde_json::Map<String, serde_json::Value> =
            params.iter().map(|p| (p.to_string(), serde_json::json!({"type": "string"}))).collect();
        serde_json::from_value(serde_json::json!({"name": name, "description": description, "tags": tags,
            "inputs": {"type": "object", "properties": props},
            "tool_call_template": {"call_template_type": "text", "content": ""}}))
        .unwrap()
    }

    proptest::proptest! {
        #[test]
        fn tokens_match_the_reference(text in "[a-zA-Z0-9 _./-]{0,40}|\\PC{0,40}|[ÄäÖöİıßǅA-Za-z]{0,20}") {
            proptest::prop_assert_eq!(tokens(&text), reference_tokens(&text));
        }

        #[test]
        fn segments_match_the_reference(docs in proptest::collection::vec(("[a-zA-Z_]{1,12}", "[a-zA-Z ]{0,40}",
            proptest::collection::vec("[a-z]{1,6}", 0..3), proptest::collection::vec("[a-zA-Z_$]{1,8}", 0..4)), 0..12)) {
            let tools: Vec<Tool> = docs.iter().map(|(n, d, t, p)| {
                let tags: Vec<&str> = t.iter().map(String::as_str).collect();
                let params: Vec<&str> = p.iter().map(String::as_str).collect();
                tool(n, d, &tags, &params)
            }).collect();
            let fast = Segment::build("GitHub REST issues", &tools);
            let slow = reference_build("GitHub REST issues", &tools);
            proptest::prop_assert_eq!(format!("{fast:?}"), format!("{slow:?}"));
        }
    }

    #[test]
    fn unicode_does_not_panic() {
        assert_eq!(tokens("Ärger Öl ünïcödé"), ["ärger", "öl", "ünïcödé"]);
        let _ = query_terms("日本語のツール検索");
    }
}
