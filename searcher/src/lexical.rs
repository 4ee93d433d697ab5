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

/// Most matches a plain question scores. Its words are kept rarest first while their matches
/// add up to no more than this, so the cost of a search is bounded whatever the tenant's size:
/// a word in thousands of messages adds thousands of weak matches (and weighs little anyway).
/// When no rarer word matches anything and a word has this many matches or more, it is looked
/// for alone, newest first ([`TextQuery::Newest`]): all its matches rank the same.
/// At 1,000 a search scores in about 3.5 ms on the 2-core development machine at 100,000 messages
/// (about 3.5 µs a row: fetching the row, rechecking the match, summing the weights).
pub const SCORED_MAX: i64 = 1_000;

/// The words weighted by their rarity, rarest first, pruned to [`SCORED_MAX`] matches in all.
/// `frequencies` are counted no further than `SCORED_MAX`.
pub fn weighted(words: Vec<String>, total: i64, frequencies: &[i64]) -> TextQuery {
    let mut terms: Vec<(Term, i64)> =
        words.into_iter().zip(frequencies).map(|(lexeme, &df)| (Term { lexeme, weight: idf(total, df) }, df)).collect();
    // Stable: words as common as each other keep the query's order.
    terms.sort_by_key(|(_, df)| *df);
    let mut kept = Vec::with_capacity(terms.len());
    let mut matches = 0;
    for (term, df) in terms {
        // A count of SCORED_MAX means "at least": such a word is never scored.
        if df >= SCORED_MAX || matches + df > SCORED_MAX {
            // Nothing rarer matches anything: the commonest word's newest matches.
            if matches == 0 {
                return TextQuery::Newest(term);
            }
            break;
        }
        matches += df;
        kept.push(term);
    }
    TextQuery::AnyOf(kept)
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
    fn the_rarest_words_are_kept_while_their_matches_fit_the_budget() {
        let lexemes = |q: TextQuery| match q {
            TextQuery::AnyOf(terms) => terms.into_iter().map(|t| t.lexeme).collect::<Vec<_>>(),
            other => panic!("not weighted: {other:?}"),
        };
        let (some, half) = (SCORED_MAX * 9 / 20, SCORED_MAX / 2);
        let q = weighted(list(&["ferry", "time", "kx-4471", "lisbon"]), 100_000, &[some, SCORED_MAX, 3, half]);
        assert_eq!(lexemes(q), ["kx-4471", "ferry", "lisbon"], "rarest first; the common word is dropped");
        let q = weighted(list(&["ferry", "lisbon"]), 100_000, &[SCORED_MAX * 3 / 4, half]);
        assert_eq!(lexemes(q), ["lisbon"], "together over the budget: the rarer alone");
        let q = weighted(list(&["ferry", "kx"]), 10, &[0, 0]);
        assert_eq!(lexemes(q), ["ferry", "kx"], "equally rare words keep the query's order");
    }

    #[test]
    fn a_query_of_common_words_reads_the_newest_matches_of_the_rarest() {
        let q = weighted(list(&["the", "time"]), 100_000, &[SCORED_MAX, SCORED_MAX]);
        assert!(matches!(&q, TextQuery::Newest(t) if t.lexeme == "the"), "{q:?}");
        let q = weighted(list(&["time"]), 100_000, &[SCORED_MAX - 1]);
        assert!(matches!(&q, TextQuery::AnyOf(t) if t.len() == 1), "{q:?}");
        // A word found nowhere does not make a common word's every match scored.
        let q = weighted(list(&["corenlo", "hotel"]), 100_000, &[0, SCORED_MAX]);
        assert!(matches!(&q, TextQuery::Newest(t) if t.lexeme == "hotel"), "{q:?}");
        let q = weighted(list(&["corenlo", "hotel"]), 100_000, &[1, SCORED_MAX]);
        assert!(matches!(&q, TextQuery::AnyOf(t) if t.len() == 1 && t[0].lexeme == "corenlo"), "{q:?}");
    }
}
