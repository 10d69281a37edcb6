//! Comparing what the citizen submitted with the population DB's record. Done here, not by the upstream,
//! and only the per-field verdict leaves the connector — never the record.
//!
//! Names are compared after Unicode NFC normalisation, case folding and whitespace collapsing, **with**
//! diacritics: "Nguyễn Văn An" and "Nguyen Van An" are not the same name, and the match is reported as
//! `match_without_diacritics` — never as a full match. Dates compare whichever parts the record has; sex
//! compares the record's `GioiTinh`.

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

use crate::cccd::Sex;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldVerdict {
    Match,
    Mismatch,
    MatchWithoutDiacritics,
    NotChecked,
}

/// A date of birth as submitted or recorded: a full date or only the year.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BirthDate {
    Full { year: u16, month: u8, day: u8 },
    Year(u16),
}

impl BirthDate {
    pub fn year(self) -> u16 {
        match self {
            BirthDate::Full { year, .. } | BirthDate::Year(year) => year,
        }
    }

    /// Parses the API form: `YYYY-MM-DD` or `YYYY`.
    pub fn parse_iso(text: &str) -> Option<BirthDate> {
        let text = text.trim();
        if text.len() == 4 {
            return text
                .parse()
                .ok()
                .filter(|y| *y >= 1800)
                .map(BirthDate::Year);
        }
        let mut parts = text.splitn(3, '-');
        let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
        if y.len() != 4 || m.len() != 2 || d.len() != 2 {
            return None;
        }
        full(y.parse().ok()?, m.parse().ok()?, d.parse().ok()?)
    }

    /// Parses the population DB's forms: `yyyyMMdd` or `yyyy`.
    pub fn parse_compact(text: &str) -> Option<BirthDate> {
        let text = text.trim();
        match text.len() {
            4 => text.parse().ok().map(BirthDate::Year),
            8 if text.bytes().all(|b| b.is_ascii_digit()) => full(
                text[..4].parse().ok()?,
                text[4..6].parse().ok()?,
                text[6..].parse().ok()?,
            ),
            _ => None,
        }
    }

    /// The population DB's form: `yyyyMMdd`, or `yyyy` when only the year is known.
    pub fn compact(self) -> String {
        match self {
            BirthDate::Full { year, month, day } => format!("{year:04}{month:02}{day:02}"),
            BirthDate::Year(year) => format!("{year:04}"),
        }
    }
}

fn full(year: u16, month: u8, day: u8) -> Option<BirthDate> {
    let leap = (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    (year >= 1800 && (1..=days).contains(&day)).then_some(BirthDate::Full { year, month, day })
}

/// NFC, lower case, single spaces, no leading or trailing space.
pub fn normalize_name(name: &str) -> String {
    let composed: String = name.nfc().collect();
    composed
        .to_lowercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .nfc()
        .collect()
}

/// The name without Vietnamese diacritics (tone and vowel marks removed; đ → d).
pub fn strip_diacritics(name: &str) -> String {
    name.nfd()
        .filter(|c| !is_combining_mark(*c))
        .map(|c| match c {
            'đ' => 'd',
            'Đ' => 'D',
            other => other,
        })
        .collect()
}

pub fn compare_names(submitted: &str, recorded: &str) -> FieldVerdict {
    let (a, b) = (normalize_name(submitted), normalize_name(recorded));
    if a.is_empty() || b.is_empty() {
        return FieldVerdict::NotChecked;
    }
    if a == b {
        FieldVerdict::Match
    } else if strip_diacritics(&a) == strip_diacritics(&b) {
        FieldVerdict::MatchWithoutDiacritics
    } else {
        FieldVerdict::Mismatch
    }
}

/// Compares the parts both sides have: a full date against a full date, else the years.
pub fn compare_birth_dates(submitted: BirthDate, recorded: Option<BirthDate>) -> FieldVerdict {
    let Some(recorded) = recorded else {
        return FieldVerdict::NotChecked;
    };
    let same = match (submitted, recorded) {
        (BirthDate::Full { .. }, BirthDate::Full { .. }) => submitted == recorded,
        _ => submitted.year() == recorded.year(),
    };
    if same {
        FieldVerdict::Match
    } else {
        FieldVerdict::Mismatch
    }
}

pub fn compare_sex(submitted: Option<Sex>, recorded: Option<Sex>) -> FieldVerdict {
    match (submitted, recorded) {
        (Some(a), Some(b)) if a == b => FieldVerdict::Match,
        (Some(_), Some(_)) => FieldVerdict::Mismatch,
        _ => FieldVerdict::NotChecked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_same_name_matches_whatever_its_case_spacing_or_normal_form() {
        assert_eq!(
            compare_names("Nguyễn Văn An", "NGUYỄN VĂN AN"),
            FieldVerdict::Match
        );
        assert_eq!(
            compare_names("  Nguyễn   Văn\tAn ", "Nguyễn Văn An"),
            FieldVerdict::Match
        );
        let nfd: String = "Trần Thị Ngọc Ánh".nfd().collect();
        assert_ne!(nfd, "Trần Thị Ngọc Ánh");
        assert_eq!(
            compare_names(&nfd, "TRẦN THỊ NGỌC ÁNH"),
            FieldVerdict::Match
        );
    }

    #[test]
    fn a_name_that_differs_only_by_a_diacritic_is_not_a_full_match() {
        assert_eq!(
            compare_names("Nguyen Van An", "Nguyễn Văn An"),
            FieldVerdict::MatchWithoutDiacritics
        );
        assert_eq!(
            compare_names("Lê Thị Hà", "Lê Thị Hạ"),
            FieldVerdict::MatchWithoutDiacritics
        );
        assert_eq!(
            compare_names("Đỗ Minh", "Do Minh"),
            FieldVerdict::MatchWithoutDiacritics
        );
        assert_eq!(
            compare_names("Nguyễn Văn An", "Nguyễn Văn Anh"),
            FieldVerdict::Mismatch
        );
        assert_eq!(compare_names("", "Nguyễn Văn An"), FieldVerdict::NotChecked);
    }

    #[test]
    fn dates_compare_the_parts_the_record_has() {
        let full = BirthDate::parse_iso("1990-05-17").expect("date");
        let year_only = BirthDate::parse_compact("1990");
        assert_eq!(
            compare_birth_dates(full, BirthDate::parse_compact("19900517")),
            FieldVerdict::Match
        );
        assert_eq!(
            compare_birth_dates(full, BirthDate::parse_compact("19900518")),
            FieldVerdict::Mismatch
        );
        assert_eq!(compare_birth_dates(full, year_only), FieldVerdict::Match);
        assert_eq!(
            compare_birth_dates(BirthDate::Year(1991), year_only),
            FieldVerdict::Mismatch
        );
        assert_eq!(compare_birth_dates(full, None), FieldVerdict::NotChecked);
    }

    #[test]
    fn impossible_dates_are_refused() {
        assert_eq!(BirthDate::parse_iso("1990-02-30"), None);
        assert_eq!(BirthDate::parse_iso("1990-13-01"), None);
        assert_eq!(BirthDate::parse_iso("90-01-01"), None);
        assert!(BirthDate::parse_iso("2000-02-29").is_some());
        assert_eq!(BirthDate::parse_iso("1900-02-29"), None);
        assert_eq!(BirthDate::parse_compact("19900230"), None);
    }

    #[test]
    fn sex_is_checked_only_when_both_sides_have_it() {
        assert_eq!(
            compare_sex(Some(Sex::Male), Sex::from_code("1")),
            FieldVerdict::Match
        );
        assert_eq!(
            compare_sex(Some(Sex::Male), Sex::from_code("2")),
            FieldVerdict::Mismatch
        );
        assert_eq!(
            compare_sex(None, Sex::from_code("2")),
            FieldVerdict::NotChecked
        );
        assert_eq!(
            compare_sex(Some(Sex::Female), Sex::from_code("")),
            FieldVerdict::NotChecked
        );
    }

    fn vietnamese_name() -> impl Strategy<Value = String> {
        let family = proptest::sample::select(vec![
            "Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Võ", "Đặng", "Bùi",
            "Đỗ", "Hồ", "Ngô", "Dương", "Lý",
        ]);
        let middle = proptest::sample::select(vec![
            "Văn", "Thị", "Hữu", "Đức", "Ngọc", "Minh", "Thanh", "Quốc", "Thu", "Xuân",
        ]);
        let given = proptest::sample::select(vec![
            "An", "Anh", "Ánh", "Bình", "Châu", "Dũng", "Hà", "Hạ", "Hải", "Hằng", "Hương", "Khoa",
            "Lan", "Linh", "Mai", "Nam", "Ngân", "Phúc", "Quân", "Sơn", "Thảo", "Trang", "Tuấn",
            "Việt", "Yến",
        ]);
        (family, middle, given).prop_map(|(f, m, g)| format!("{f} {m} {g}"))
    }

    proptest! {
        #[test]
        fn a_name_always_matches_itself_in_any_case_spacing_or_form(name in vietnamese_name(), upper in any::<bool>(), nfd in any::<bool>(), pad in 0usize..4) {
            let mut variant = if upper { name.to_uppercase() } else { name.clone() };
            if nfd { variant = variant.nfd().collect(); }
            let spaced = format!("{}{}{}", " ".repeat(pad), variant.replace(' ', &" ".repeat(pad + 1)), "\t".repeat(pad));
            prop_assert_eq!(compare_names(&spaced, &name), FieldVerdict::Match);
        }

        #[test]
        fn stripping_diacritics_never_yields_a_full_match_unless_there_were_none(name in vietnamese_name()) {
            let plain = strip_diacritics(&name);
            let verdict = compare_names(&plain, &name);
            if plain == name {
                prop_assert_eq!(verdict, FieldVerdict::Match);
            } else {
                prop_assert_eq!(verdict, FieldVerdict::MatchWithoutDiacritics);
            }
        }

        #[test]
        fn different_names_never_match(a in vietnamese_name(), b in vietnamese_name()) {
            prop_assume!(strip_diacritics(&a) != strip_diacritics(&b));
            prop_assert_eq!(compare_names(&a, &b), FieldVerdict::Mismatch);
        }

        #[test]
        fn name_comparison_never_panics(a in "\\PC{0,40}", b in "\\PC{0,40}") {
            let _ = compare_names(&a, &b);
        }
    }
}
