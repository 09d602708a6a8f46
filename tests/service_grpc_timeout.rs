//! The `grpc-timeout` codec against gRPC's HTTP/2 protocol document: `TimeoutValue` is one to
//! eight ASCII digits, `TimeoutUnit` one of `H M S m u n`, and nothing else is a timeout.
//! Reference model for `decode`: the regular expression `^[0-9]{1,8}[HMSmun]$`.
#![cfg(feature = "tower")]

use std::time::Duration;

use proptest::prelude::*;
use taskctx::service::grpc_timeout::{decode, encode};

fn well_formed(value: &[u8]) -> bool {
    let re = regex_lite::Regex::new("^[0-9]{1,8}[HMSmun]$").unwrap();
    std::str::from_utf8(value).is_ok_and(|s| re.is_match(s))
}

/// The longest budget `encode` writes as it is: 99,999,999 hours.
const MAX: Duration = Duration::from_secs(99_999_999 * 3_600);

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn encode_then_decode_never_lengthens_and_loses_under_one_part_in_100_000(
        secs in 0u64..=MAX.as_secs(),
        nanos in 0u32..1_000_000_000,
    ) {
        let budget = Duration::new(secs, nanos);
        let wire = encode(budget);
        let back = decode(wire.as_bytes()).expect("encode writes what decode reads");
        prop_assert!(back <= budget, "{budget:?} -> {wire:?} -> {back:?}");
        let lost = (budget - back).as_nanos();
        prop_assert!(lost * 100_000 <= budget.as_nanos(), "{budget:?} -> {wire:?}");
        prop_assert!(well_formed(wire.as_bytes()));
    }

    #[test]
    fn budgets_under_100_ms_cross_exactly(nanos in 0u64..100_000_000) {
        let budget = Duration::from_nanos(nanos);
        prop_assert_eq!(decode(encode(budget).as_bytes()), Ok(budget));
    }

    #[test]
    fn decode_accepts_exactly_the_protocols_grammar(value in proptest::collection::vec(any::<u8>(), 0..12)) {
        prop_assert_eq!(decode(&value).is_ok(), well_formed(&value), "{:?}", value);
    }

    #[test]
    fn decode_accepts_exactly_the_grammar_on_near_misses(value in "[ +\\-0-9HMSmunsh\u{0660}]{0,11}") {
        prop_assert_eq!(decode(value.as_bytes()).is_ok(), well_formed(value.as_bytes()), "{:?}", value);
    }

    #[test]
    fn well_formed_values_decode_to_their_value_in_their_unit(value in 0u64..100_000_000, unit in 0usize..6) {
        let (letter, nanos) = [("n", 1u128), ("u", 1_000), ("m", 1_000_000), ("S", 1_000_000_000),
            ("M", 60_000_000_000), ("H", 3_600_000_000_000)][unit];
        let decoded = decode(format!("{value}{letter}").as_bytes()).unwrap();
        prop_assert_eq!(decoded.as_nanos(), u128::from(value) * nanos);
    }
}

#[test]
fn every_malformed_form_is_refused_with_a_message_that_says_why() {
    for (value, why) in [
        ("", "empty"),
        ("S", "no digits before the unit"),
        ("123456789S", "more than 8 digits"),
        ("000000001S", "more than 8 digits"),
        ("-1S", "a value of other than ASCII digits"),
        ("+1S", "a value of other than ASCII digits"),
        (" 1S", "a value of other than ASCII digits"),
        ("1 S", "a value of other than ASCII digits"),
        ("1.5S", "a value of other than ASCII digits"),
        ("\u{0661}S", "a value of other than ASCII digits"),
        ("1S ", "a value of other than ASCII digits"),
        ("1s", "a unit other than H, M, S, m, u or n"),
        ("1h", "a unit other than H, M, S, m, u or n"),
        ("10", "a unit other than H, M, S, m, u or n"),
    ] {
        let err = decode(value.as_bytes()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("malformed grpc-timeout: {why}"),
            "{value:?}"
        );
    }
}

#[test]
fn encode_picks_the_finest_unit_that_fits_in_eight_digits() {
    for (budget, wire) in [
        (Duration::ZERO, "0n"),
        (Duration::from_nanos(99_999_999), "99999999n"),
        (Duration::from_nanos(100_000_000), "100000u"),
        (Duration::from_millis(300), "300000u"),
        (Duration::from_secs(100), "100000m"),
        (Duration::from_secs(100_000), "100000S"),
        (Duration::from_secs(100_000_000), "1666666M"),
        (Duration::from_secs(6_000_000_000), "1666666H"),
        (MAX, "99999999H"),
        (Duration::MAX, "99999999H"),
    ] {
        assert_eq!(encode(budget), wire, "{budget:?}");
    }
}
