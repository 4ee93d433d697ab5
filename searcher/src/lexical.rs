//! What full-text search looks for. A query with web-search operators (`"a phrase"`, `or`,
//! `-word`) is taken as typed (`websearch_to_tsquery`). A plain question matches any of its
//! words except the commonest function words: requiring every word of "what did Priya say about
//! the invoice" would find nothing, and matching "the" would find everything. The index itself
//! keeps every word (the `simple` configuration), so names, numbers and codes match as typed.
//! However long the query, it costs a bounded number of terms.

use common::store::{Term, TextQuery};

/// Function words a plain question drops (English, the commonest in a few other languages).
const STOP_WORDS: &[&str] = &[
    "a",
    "about",
    "above",
    "after",
    "again",
    "against",
    "all",
    "am",
    "an",
    "and",
    "any",
    "are",
    "as",
    "at",
    "be",
    "because",
    "been",
    "before",
    "being",
    "below",
    "between",
    "both",
    "but",
    "by",
    "can",
    "could",
    "did",
    "do",
    "does",
    "doing",
    "down",
    "during",
    "each",
    "few",
    "for",
    "from",
    "further",
    "had",
    "has",
    "have",
    "having",
    "he",
    "her",
    "here",
    "hers",
    "herself",
    "him",
    "himself",
    "his",
    "how",
    "i",
    "if",
    "in",
    "into",
    "is",
    "it",
    "its",
    "itself",
    "just",
    "me",
    "more",
    "most",
    "my",
    "myself",
    "no",
    "nor",
    "not",
    "now",
    "of",
    "off",
    "on",
    "once",
    "only",
    "or",
    "other",
    "our",
    "ours",
    "ourselves",
    "out",
    "over",
    "own",
    "same",
    "she",
    "should",
    "so",
    "some",
    "such",
    "than",
    "that",
    "the",
    "their",
    "theirs",
    "them",
    "themselves",
    "then",
    "there",
    "these",
    "they",
    "this",
    "those",
    "through",
    "to",
    "too",
    "under",
    "until",
    "up",
    "very",
    "was",
    "we",
    "were",
    "what",
    "when",
    "where",
    "which",
    "while",
    "who",
    "whom",
    "why",
    "will",
    "with",
    "would",
    "you",
    "your",
    "yours",
    "yourself",
    "yourselves",
    "s",
    "t",
    "ll",
    "re",
    "ve",
    "d",
    "m",
    "don",
    "didn",
    "doesn",
    // es / pt / fr / de / it
    "el",
    "la",
    "los",
    "las",
    "de",
    "del",
    "que",
    "y",
    "en",
    "un",
    "una",
    "es",
    "por",
    "con",
    "para",
    "o",
    "os",
    "um",
    "uma",
    "do",
    "da",
    "le",
    "les",
    "des",
    "du",
    "et",
    "est",
    "une",
    "der",
    "die",
    "das",
    "und",
    "ist",
    "ein",
    "eine",
    "il",
    "di",
    "che",
    "e",
];

/// Whether `query` uses web-search syntax.
fn has_operators(query: &str) -> bool {
    query.contains('"')
        || query.split_whitespace().any(|w| w.eq_ignore_ascii_case("or") || (w.len() > 1 && w.starts_with('-')))
}

/// Most words a plain question looks for. Each costs a count and a term in every match's
/// score, so a pasted page must not cost a thousand; the longest words are kept, being the
/// rarest as a rule (and rarity is what the score rewards).
pub const MAX_TERMS: usize = 32;

/// Most words of a query taken as typed; the rest are dropped.
pub const MAX_TYPED_WORDS: usize = 64;

/// Whether `query` is taken as typed (`Err`, cut to [`MAX_TYPED_WORDS`]), else the words to
/// look for (at most [`MAX_TERMS`]), given its lexemes as the index stores them.
pub fn words(query: &str, lexemes: Vec<String>) -> Result<Vec<String>, TextQuery> {
    if has_operators(query) {
        let typed = query.split_whitespace().take(MAX_TYPED_WORDS).collect::<Vec<_>>().join(" ");
        return Err(TextQuery::Websearch(typed));
    }
    let content: Vec<String> = lexemes.iter().filter(|l| !STOP_WORDS.contains(&l.as_str())).cloned().collect();
    // A query of nothing but function words still looks for them.
    let mut words = if content.is_empty() { lexemes } else { content };
    if words.len() > MAX_TERMS {
        // Longest first; ties in the index's (alphabetical) order, so a query always keeps the same words.
        words.sort_by(|a, b| b.chars().count().cmp(&a.chars().count()).then_with(|| a.cmp(b)));
        words.truncate(MAX_TERMS);
        words.sort();
    }
    Ok(words)
}

/// BM25's inverse document frequency: a word in few of the tenant's `total` messages counts for
/// much, one in most counts for little.
pub fn idf(total: i64, containing: i64) -> f64 {
    let (n, df) = (total.max(0) as f64, containing.clamp(0, total.max(0)) as f64);
    (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
}

/// A word in at least this many of a tenant's messages is too common to look for when the query
/// has rarer ones: it would add thousands of weak matches to score (its weight is low anyway).
pub const COMMON: i64 = 2_000;

/// The words weighted by their rarity; words in `COMMON` or more messages are dropped unless
/// the query has nothing rarer, then only the rarest is kept.
pub fn weighted(words: Vec<String>, total: i64, frequencies: &[i64]) -> TextQuery {
    let mut terms: Vec<(Term, i64)> =
        words.into_iter().zip(frequencies).map(|(lexeme, &df)| (Term { lexeme, weight: idf(total, df) }, df)).collect();
    if terms.iter().any(|(_, df)| *df < COMMON) {
        terms.retain(|(_, df)| *df < COMMON);
    } else if let Some(rarest) = terms.iter().min_by_key(|(_, df)| *df).cloned() {
        terms = vec![rarest];
    }
    TextQuery::AnyOf(terms.into_iter().map(|(t, _)| t).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| (*w).to_owned()).collect()
    }

    #[test]
    fn a_plain_question_matches_any_content_word() {
        let lexemes = list(&["about", "did", "kx-4471", "priya", "say", "the", "what"]);
        assert_eq!(words("What did Priya say about the KX-4471?", lexemes), Ok(list(&["kx-4471", "priya", "say"])));
    }

    #[test]
    fn operators_are_taken_as_typed() {
        for typed in ["\"return flight\" marco", "lisbon or porto", "tiles -kitchen"] {
            assert_eq!(words(typed, vec![]), Err(TextQuery::Websearch(typed.to_owned())), "{typed}");
        }
        // A hyphenated word or a lone dash is not an operator.
        assert!(words("well-known - thing", list(&["well-known", "thing"])).is_ok());
    }

    #[test]
    fn a_long_query_looks_for_its_longest_words_only() {
        let lexemes: Vec<String> = (0..1000).map(|i| format!("w{}", "x".repeat(i % 50) + &i.to_string())).collect();
        let kept = words("a pasted page", lexemes).unwrap();
        assert_eq!(kept.len(), MAX_TERMS);
        assert!(kept.iter().all(|w| w.len() >= 50), "{kept:?}");
        let typed = format!("\"quoted\" {}", "word ".repeat(5000));
        let Err(TextQuery::Websearch(cut)) = words(&typed, vec![]) else { panic!("typed") };
        assert_eq!(cut.split_whitespace().count(), MAX_TYPED_WORDS);
    }

    #[test]
    fn only_function_words_are_kept_rather_than_nothing() {
        assert_eq!(words("who is it", list(&["is", "it", "who"])), Ok(list(&["is", "it", "who"])));
    }

    #[test]
    fn rare_words_weigh_more() {
        // BM25: ln(1 + (N - df + 0.5) / (df + 0.5)).
        assert!((idf(100, 1) - (1.0f64 + 99.5 / 1.5).ln()).abs() < 1e-12);
        assert!(idf(100, 1) > idf(100, 50));
        assert!(idf(100, 100) > 0.0, "a word in every message still counts a little");
        let TextQuery::AnyOf(terms) = weighted(list(&["a", "b"]), 10, &[1, 9]) else { panic!("not weighted") };
        assert!(terms[0].weight > terms[1].weight);
    }

    #[test]
    fn common_words_give_way_to_rarer_ones() {
        let lexemes = |q: TextQuery| match q {
            TextQuery::AnyOf(terms) => terms.into_iter().map(|t| t.lexeme).collect::<Vec<_>>(),
            TextQuery::Websearch(_) => panic!("not weighted"),
        };
        let q = weighted(list(&["ferry", "time", "kx-4471"]), 100_000, &[COMMON - 1, COMMON, 3]);
        assert_eq!(lexemes(q), ["ferry", "kx-4471"]);
        let q = weighted(list(&["the", "time"]), 100_000, &[COMMON, COMMON + 1]);
        assert_eq!(lexemes(q), ["the"], "nothing rarer: the rarest alone");
    }
}
