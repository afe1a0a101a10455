use std::time::Duration;

use sluice_proto::v1::Message;
use sluice_proto::ErrorCode;

use super::*;

#[test]
fn durations_and_levels_parse() {
    assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
    assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
    assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
    assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
    for bad in ["", "10", "m", "5x", "-1s", "99999999999999999999d"] {
        assert!(parse_duration(bad).is_err(), "{bad:?}");
    }
    let levels = parse_levels(DEFAULT_LEVELS).unwrap();
    assert_eq!(levels.len(), 18);
    assert_eq!(levels[0], Duration::from_secs(1));
    assert_eq!(levels[17], Duration::from_secs(7200));
}

#[test]
fn due_times_follow_the_delay_and_respect_max_delay() {
    let s = TimerSettings::default();
    let now = 1_000_000;
    assert_eq!(s.due_time(Delay::None, now).unwrap(), None);
    assert_eq!(
        s.due_time(Delay::AfterMs(250), now).unwrap(),
        Some(now + 250)
    );
    assert_eq!(
        s.due_time(Delay::AtMs(5), now).unwrap(),
        Some(5),
        "the past: at once"
    );
    assert_eq!(
        s.due_time(Delay::Level(3), now).unwrap(),
        Some(now + 10_000)
    );
    let month = 30 * 86_400_000;
    assert_eq!(
        s.due_time(Delay::AfterMs(month), now).unwrap(),
        Some(now + month as i64)
    );
    let e = s.due_time(Delay::AfterMs(month + 1), now).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    assert!(e.message.contains("max_delay"), "{e}");
    assert!(s.due_time(Delay::Level(0), now).is_err());
    assert!(s.due_time(Delay::Level(19), now).is_err());
    assert!(s.due_time(Delay::AfterMs(u64::MAX), now).is_err());
}

#[test]
fn wire_delays_allow_one_field() {
    let m = |delay_ms, deliver_at_ms, delay_level| Message {
        delay_ms,
        deliver_at_ms,
        delay_level,
        ..Default::default()
    };
    assert_eq!(Delay::of_wire(&m(0, 0, 0)).unwrap(), Delay::None);
    assert_eq!(Delay::of_wire(&m(5, 0, 0)).unwrap(), Delay::AfterMs(5));
    assert_eq!(Delay::of_wire(&m(0, 7, 0)).unwrap(), Delay::AtMs(7));
    assert_eq!(Delay::of_wire(&m(0, 0, 2)).unwrap(), Delay::Level(2));
    assert!(Delay::of_wire(&m(5, 7, 0)).is_err());
    assert!(Delay::of_wire(&m(5, 0, 1)).is_err());
}

#[test]
fn handles_name_their_broker_group() {
    let h = handle("broker-a", 4096);
    assert_eq!(parse_handle("broker-a", &h).unwrap(), 4096);
    assert_eq!(parse_handle("broker-a", "orders/broker-a:7").unwrap(), 7);
    assert!(parse_handle("broker-b", &h).is_err());
    for bad in ["", "broker-a", "broker-a:", "broker-a:x", ":1"] {
        assert!(parse_handle("broker-a", bad).is_err(), "{bad:?}");
    }
}

#[test]
fn scheduled_batches_carry_the_route_and_due_time() {
    let m = AppendMessage {
        message_id: "id".into(),
        properties: vec![("a".into(), "b".into())],
        ..Default::default()
    };
    let b = scheduled_batch("orders", 3, vec![(m, 42)]);
    assert_eq!((b.topic.as_str(), b.queue_id), (props::TIMER_TOPIC, 0));
    let p = &b.messages[0].properties;
    assert_eq!(props::get(p, props::DELIVER_AT), Some("42"));
    assert_eq!(props::get(p, props::REAL_TOPIC), Some("orders"));
    assert_eq!(props::get(p, props::REAL_QUEUE), Some("3"));
    assert_eq!(props::get(p, "a"), Some("b"));
    assert_eq!(b.messages[0].sys_flag, SYS_FLAG_SCHEDULED);
}

proptest::proptest! {
    /// Handles and durations come from clients and config files: any text gets an answer,
    /// never a panic.
    #[test]
    fn any_text_is_a_handle_or_an_error(s in ".{0,64}", t in "[0-9a-z:/%-]{0,32}") {
        let _ = parse_handle("broker-a", &s);
        let _ = parse_handle("broker-a", &t);
        let _ = parse_duration(&s);
        let _ = parse_duration(&t);
        let _ = parse_levels(&s);
    }
}
