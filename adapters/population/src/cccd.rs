//! The 12-digit personal identification number (số định danh cá nhân, on the CCCD card) and the checks
//! that need no upstream call (docs/PROTOCOLS.md).
//!
//! Digits 1–3: the province where the birth was registered (one of the 63 pre-2025 codes), or 101–295 for
//! a birth registered abroad (the country codes of Circular 07/2016/TT-BCA's annex). Digit 4: sex and
//! century — even male, odd female; century = 1900 + 100·⌊d/2⌋. Digits 5–6: the year of birth's last two
//! digits. Digits 7–12: serial. There is no check digit.

use std::fmt;

/// Province codes and names (pre-2025; the 2025 mergers did not renumber issued IDs).
pub const PROVINCES: &[(u16, &str)] = &[
    (1, "Hà Nội"),
    (2, "Hà Giang"),
    (4, "Cao Bằng"),
    (6, "Bắc Kạn"),
    (8, "Tuyên Quang"),
    (10, "Lào Cai"),
    (11, "Điện Biên"),
    (12, "Lai Châu"),
    (14, "Sơn La"),
    (15, "Yên Bái"),
    (17, "Hòa Bình"),
    (19, "Thái Nguyên"),
    (20, "Lạng Sơn"),
    (22, "Quảng Ninh"),
    (24, "Bắc Giang"),
    (25, "Phú Thọ"),
    (26, "Vĩnh Phúc"),
    (27, "Bắc Ninh"),
    (30, "Hải Dương"),
    (31, "Hải Phòng"),
    (33, "Hưng Yên"),
    (34, "Thái Bình"),
    (35, "Hà Nam"),
    (36, "Nam Định"),
    (37, "Ninh Bình"),
    (38, "Thanh Hóa"),
    (40, "Nghệ An"),
    (42, "Hà Tĩnh"),
    (44, "Quảng Bình"),
    (45, "Quảng Trị"),
    (46, "Thừa Thiên Huế"),
    (48, "Đà Nẵng"),
    (49, "Quảng Nam"),
    (51, "Quảng Ngãi"),
    (52, "Bình Định"),
    (54, "Phú Yên"),
    (56, "Khánh Hòa"),
    (58, "Ninh Thuận"),
    (60, "Bình Thuận"),
    (62, "Kon Tum"),
    (64, "Gia Lai"),
    (66, "Đắk Lắk"),
    (67, "Đắk Nông"),
    (68, "Lâm Đồng"),
    (70, "Bình Phước"),
    (72, "Tây Ninh"),
    (74, "Bình Dương"),
    (75, "Đồng Nai"),
    (77, "Bà Rịa - Vũng Tàu"),
    (79, "TP Hồ Chí Minh"),
    (80, "Long An"),
    (82, "Tiền Giang"),
    (83, "Bến Tre"),
    (84, "Trà Vinh"),
    (86, "Vĩnh Long"),
    (87, "Đồng Tháp"),
    (89, "An Giang"),
    (91, "Kiên Giang"),
    (92, "Cần Thơ"),
    (93, "Hậu Giang"),
    (94, "Sóc Trăng"),
    (95, "Bạc Liêu"),
    (96, "Cà Mau"),
];

/// Country codes for births registered abroad.
pub const COUNTRY_CODES: std::ops::RangeInclusive<u16> = 101..=295;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sex {
    Male,
    Female,
}

impl Sex {
    /// The population DB's `GioiTinh` code.
    pub fn code(self) -> &'static str {
        match self {
            Sex::Male => "1",
            Sex::Female => "2",
        }
    }

    pub fn from_code(code: &str) -> Option<Sex> {
        match code.trim() {
            "1" => Some(Sex::Male),
            "2" => Some(Sex::Female),
            _ => None,
        }
    }
}

/// Where the birth was registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BirthPlace {
    Province { code: u16, name: &'static str },
    Abroad { country_code: u16 },
}

/// Why a string is not a valid identification number. `code()` is stable for API errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CccdError {
    #[error("must be exactly 12 digits")]
    Length,
    #[error("must contain only the digits 0-9")]
    NotDigits,
    #[error("digits 1-3 are neither a province nor a country code")]
    UnknownPlace,
    #[error("digits 4-6 give a birth year that does not match the date of birth")]
    BirthYearMismatch,
    #[error("digit 4 gives a sex that does not match the gender")]
    SexMismatch,
}

impl CccdError {
    pub fn code(&self) -> &'static str {
        match self {
            CccdError::Length => "invalid_length",
            CccdError::NotDigits => "not_digits",
            CccdError::UnknownPlace => "unknown_place_code",
            CccdError::BirthYearMismatch => "birth_year_mismatch",
            CccdError::SexMismatch => "sex_mismatch",
        }
    }
}

/// A structurally valid identification number. `Debug` and `Display` are masked; the full value is only
/// available through [`CitizenId::expose`], for the wire.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CitizenId(String);

impl CitizenId {
    /// Parses the number alone: length, digits, a known place code.
    pub fn parse(text: &str) -> Result<CitizenId, CccdError> {
        if text.chars().count() != 12 {
            return Err(CccdError::Length);
        }
        if !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CccdError::NotDigits);
        }
        let id = CitizenId(text.to_owned());
        if id.birth_place().is_none() {
            return Err(CccdError::UnknownPlace);
        }
        Ok(id)
    }

    /// Parses and checks the number against the submitted year of birth and, when given, sex.
    pub fn parse_for(
        text: &str,
        birth_year: u16,
        sex: Option<Sex>,
    ) -> Result<CitizenId, CccdError> {
        let id = Self::parse(text)?;
        if id.birth_year() != birth_year {
            return Err(CccdError::BirthYearMismatch);
        }
        if sex.is_some_and(|s| s != id.sex()) {
            return Err(CccdError::SexMismatch);
        }
        Ok(id)
    }

    fn digit(&self, i: usize) -> u16 {
        u16::from(self.0.as_bytes()[i] - b'0')
    }

    pub fn place_code(&self) -> u16 {
        self.digit(0) * 100 + self.digit(1) * 10 + self.digit(2)
    }

    pub fn birth_place(&self) -> Option<BirthPlace> {
        let code = self.place_code();
        if let Some((_, name)) = PROVINCES.iter().find(|(c, _)| *c == code) {
            return Some(BirthPlace::Province { code, name });
        }
        COUNTRY_CODES
            .contains(&code)
            .then_some(BirthPlace::Abroad { country_code: code })
    }

    pub fn sex(&self) -> Sex {
        if self.digit(3).is_multiple_of(2) {
            Sex::Male
        } else {
            Sex::Female
        }
    }

    pub fn birth_year(&self) -> u16 {
        1900 + 100 * (self.digit(3) / 2) + self.digit(4) * 10 + self.digit(5)
    }

    /// The full number, for the upstream request only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// First three and last two digits; safe for logs and operators.
    pub fn masked(&self) -> String {
        mask(&self.0)
    }
}

/// Masks an identification number (or anything of its shape) for logs: `001*******89`.
pub fn mask(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= 5 {
        return "*".repeat(chars.len());
    }
    let mut out: String = chars[..3].iter().collect();
    out.push_str(&"*".repeat(chars.len() - 5));
    out.extend(&chars[chars.len() - 2..]);
    out
}

impl fmt::Debug for CitizenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CitizenId({})", self.masked())
    }
}

impl fmt::Display for CitizenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// Builds a valid number from its parts (for fixtures and tests).
pub fn compose(place: u16, sex: Sex, birth_year: u16, serial: u32) -> Option<String> {
    if !(1900..=2399).contains(&birth_year) || serial > 999_999 {
        return None;
    }
    let century = (birth_year - 1900) / 100;
    let d4 = century * 2 + u16::from(sex == Sex::Female);
    Some(format!("{place:03}{d4}{:02}{serial:06}", birth_year % 100))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_valid_number_decodes_into_its_parts() {
        let id = CitizenId::parse("001203012345").expect("valid");
        assert_eq!(
            id.birth_place(),
            Some(BirthPlace::Province {
                code: 1,
                name: "Hà Nội"
            })
        );
        assert_eq!(id.sex(), Sex::Male);
        assert_eq!(id.birth_year(), 2003);
        assert_eq!(
            CitizenId::parse("079185000001").map(|i| (i.sex(), i.birth_year())),
            Ok((Sex::Female, 1985))
        );
    }

    #[test]
    fn structural_faults_are_told_apart() {
        assert_eq!(CitizenId::parse("00120301234"), Err(CccdError::Length));
        assert_eq!(CitizenId::parse("0012030123456"), Err(CccdError::Length));
        assert_eq!(CitizenId::parse("00120301234a"), Err(CccdError::NotDigits));
        assert_eq!(
            CitizenId::parse("００１２０３０１２３４５"),
            Err(CccdError::NotDigits)
        );
        assert_eq!(
            CitizenId::parse("003203012345"),
            Err(CccdError::UnknownPlace)
        );
        assert_eq!(
            CitizenId::parse("099203012345"),
            Err(CccdError::UnknownPlace)
        );
        assert_eq!(
            CitizenId::parse("296203012345"),
            Err(CccdError::UnknownPlace)
        );
        assert!(CitizenId::parse("175203012345").is_ok(), "born abroad (US)");
    }

    #[test]
    fn the_number_must_agree_with_the_date_of_birth_and_sex() {
        assert!(CitizenId::parse_for("001203012345", 2003, Some(Sex::Male)).is_ok());
        assert_eq!(
            CitizenId::parse_for("001203012345", 1903, None),
            Err(CccdError::BirthYearMismatch)
        );
        assert_eq!(
            CitizenId::parse_for("001203012345", 2003, Some(Sex::Female)),
            Err(CccdError::SexMismatch)
        );
    }

    #[test]
    fn the_number_never_prints_in_full() {
        let id = CitizenId::parse("001203012345").expect("valid");
        assert_eq!(id.to_string(), "001*******45");
        assert!(!format!("{id:?}").contains("203012"));
        assert_eq!(mask("123"), "***");
    }

    proptest! {
        #[test]
        fn composed_numbers_parse_back_to_their_parts(
            province in proptest::sample::select(PROVINCES.iter().map(|(c, _)| *c).collect::<Vec<_>>()),
            female in any::<bool>(),
            year in 1900u16..2100,
            serial in 0u32..1_000_000,
        ) {
            let sex = if female { Sex::Female } else { Sex::Male };
            let text = compose(province, sex, year, serial).expect("composable");
            let id = CitizenId::parse_for(&text, year, Some(sex)).expect("consistent");
            prop_assert_eq!(id.place_code(), province);
            prop_assert_eq!(id.sex(), sex);
            prop_assert_eq!(id.birth_year(), year);
        }

        #[test]
        fn parsing_never_panics(text in "\\PC{0,20}") {
            let _ = CitizenId::parse(&text);
        }

        #[test]
        fn any_other_year_is_refused(year in 1900u16..2100, other in 1900u16..2100, serial in 0u32..1_000_000) {
            prop_assume!(year != other);
            let text = compose(1, Sex::Male, year, serial).expect("composable");
            prop_assert_eq!(CitizenId::parse_for(&text, other, None), Err(CccdError::BirthYearMismatch));
        }
    }
}
