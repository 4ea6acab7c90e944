//! The transport against an in-process CoAP server (tests/support), over real UDP on
//! loopback, with tokio's paused clock: timing is checked exactly, in virtual time.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use coap_lite::{CoapOption, MessageType};
use fieldgate_coap::transport::{
    BlockConfig, Endpoint, EndpointConfig, Method, Request, TransmissionParams, TransportError,
};
use support::{Mode, Responder, TooLargeHint};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

fn endpoint() -> Endpoint {
    Endpoint::bind(EndpointConfig::default(), CancellationToken::new()).expect("bind")
}

fn params() -> TransmissionParams {
    TransmissionParams::default()
}

async fn responder() -> Responder {
    Responder::start("127.0.0.1:0").await.expect("responder")
}

async fn get(
    ep: &Endpoint,
    r: &Responder,
    path: &str,
) -> Result<fieldgate_coap::transport::Response, TransportError> {
    ep.request(
        r.addr,
        Request::get(path),
        &params(),
        BlockConfig::default(),
    )
    .await
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn assert_close(actual: Duration, expected: Duration, what: &str) {
    let diff = (ms(actual) - ms(expected)).abs();
    assert!(diff <= 3.0, "{what}: {actual:?}, expected {expected:?}");
}

/// A piggybacked response: one datagram each way, no retransmission.
#[tokio::test(start_paused = true)]
async fn piggybacked_response() {
    let (ep, r) = (endpoint(), responder().await);
    let resp = get(&ep, &r, "/temp").await.unwrap();
    assert_eq!(resp.code, (2, 5));
    assert_eq!(resp.payload, b"21.5");
    assert_eq!(resp.content_format, Some(0));
    let reqs = r.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].mtype(), MessageType::Confirmable);
    let tkl = reqs[0].packet.get_token().len();
    assert!((4..=8).contains(&tkl));
    assert_eq!(ep.stats().retransmissions, 0);
    // An error code is an answer, not a transport error.
    let nf = get(&ep, &r, "/nope").await.unwrap();
    assert_eq!(nf.code_string(), "4.04");
}

/// RFC 7252 §4.2 back-off, measured at the server: the first retransmission after a
/// random T in [2 s, 3 s], then 2T, 4T, 8T (same message id), give-up 16T after the
/// fourth, i.e. 31T ∈ [62 s, 93 s] (MAX_TRANSMIT_WAIT) after the first transmission, and
/// the last retransmission within MAX_TRANSMIT_SPAN (45 s).
#[tokio::test(start_paused = true)]
async fn retransmission_timing_follows_rfc_7252() {
    let ep = endpoint();
    let mut firsts = Vec::new();
    for _ in 0..8 {
        let r = responder().await;
        r.set(|b| b.mode = Mode::Silent);
        let start = Instant::now();
        let err = get(&ep, &r, "/temp").await.unwrap_err();
        let gave_up = Instant::now();
        assert_eq!(err, TransportError::Timeout { retransmissions: 4 });
        assert_eq!(err.to_string(), "no answer after 4 retransmissions");

        let reqs = r.requests();
        assert_eq!(reqs.len(), 5, "one transmission and four retransmissions");
        assert!(
            reqs.iter().all(|q| q.mid() == reqs[0].mid()),
            "same message id"
        );
        assert!(reqs
            .iter()
            .all(|q| q.packet.get_token() == reqs[0].packet.get_token()));
        assert_close(reqs[0].at - start, Duration::ZERO, "first transmission");
        // tokio's timer has 1 ms ticks: each instant is within 1 ms of the ideal one.
        // T is estimated from the give-up at 31T, then every transmission checked
        // against (2^k − 1)·T.
        let total = gave_up - reqs[0].at;
        let t = total / 31;
        assert!(
            t >= Duration::from_secs(2) && t <= Duration::from_millis(3000),
            "first timeout {t:?} outside [ACK_TIMEOUT, ACK_TIMEOUT × ACK_RANDOM_FACTOR]"
        );
        for (k, q) in reqs.iter().enumerate() {
            assert_close(
                q.at - reqs[0].at,
                t * ((1 << k) - 1),
                &format!("transmission {k}"),
            );
        }
        assert!(reqs[4].at - reqs[0].at <= params().max_transmit_span() + Duration::from_millis(3));
        assert!(
            total >= Duration::from_secs(62)
                && total <= params().max_transmit_wait() + Duration::from_millis(3)
        );
        firsts.push(t);
    }
    let mut firsts: Vec<u128> = firsts.iter().map(|d| d.as_millis()).collect();
    firsts.sort();
    firsts.dedup();
    assert!(
        firsts.len() > 4,
        "the first timeout must be random: {firsts:?}"
    );
    assert_eq!(ep.stats().retransmissions, 8 * 4);
}

/// Lost datagrams: the third transmission gets through, at T + 2T.
#[tokio::test(start_paused = true)]
async fn lost_transmissions_are_retransmitted() {
    let (ep, r) = (endpoint(), responder().await);
    r.set(|b| b.drop_first = 2);
    let start = Instant::now();
    let resp = get(&ep, &r, "/temp").await.unwrap();
    assert_eq!(resp.payload, b"21.5");
    let reqs = r.requests();
    assert_eq!(reqs.len(), 3);
    let t = reqs[1].at - reqs[0].at;
    assert_close(reqs[2].at - start, t * 3, "third transmission");
    assert_eq!(ep.stats().retransmissions, 2);
}

/// Empty ACK, then a separate CON response 10 s later: the ACK stops retransmission (no
/// second request although 10 s > 3 s), the response is matched by token and ACKed.
#[tokio::test(start_paused = true)]
async fn empty_ack_then_separate_con_response() {
    let (ep, r) = (endpoint(), responder().await);
    r.set(|b| {
        b.mode = Mode::Separate {
            delay: Duration::from_secs(10),
            con: true,
        }
    });
    let start = Instant::now();
    let resp = get(&ep, &r, "/temp").await.unwrap();
    assert_eq!(resp.payload, b"21.5");
    assert_close(
        Instant::now() - start,
        Duration::from_secs(10),
        "response time",
    );
    assert_eq!(
        r.requests().len(),
        1,
        "the empty ACK stopped retransmission"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    let acks: Vec<_> = r
        .log()
        .into_iter()
        .filter(|x| x.mtype() == MessageType::Acknowledgement)
        .collect();
    assert_eq!(acks.len(), 1, "the separate CON response was acknowledged");
    assert_eq!(acks[0].mid(), 0x7001, "with the response's message id");
    assert!(acks[0].packet.get_token().is_empty() && acks[0].packet.payload.is_empty());
}

/// Empty ACK, then a separate NON response: nothing to acknowledge.
#[tokio::test(start_paused = true)]
async fn empty_ack_then_separate_non_response() {
    let (ep, r) = (endpoint(), responder().await);
    r.set(|b| {
        b.mode = Mode::Separate {
            delay: Duration::from_secs(1),
            con: false,
        }
    });
    let resp = get(&ep, &r, "/temp").await.unwrap();
    assert_eq!(resp.payload, b"21.5");
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(r.log().len(), 1, "no ACK for a NON, no RST");
}

/// An empty ACK and then nothing: a NoResponse error after response_timeout.
#[tokio::test(start_paused = true)]
async fn empty_ack_without_separate_response_times_out() {
    let (ep, r) = (endpoint(), responder().await);
    r.set(|b| {
        b.mode = Mode::Separate {
            delay: Duration::from_secs(3600),
            con: true,
        }
    });
    let p = TransmissionParams {
        response_timeout: Duration::from_secs(20),
        ..params()
    };
    let start = Instant::now();
    let err = ep
        .request(r.addr, Request::get("temp"), &p, BlockConfig::default())
        .await
        .unwrap_err();
    assert_eq!(
        err,
        TransportError::NoResponse {
            waited: Duration::from_secs(20)
        }
    );
    assert_close(Instant::now() - start, Duration::from_secs(20), "waited");
    assert_eq!(r.requests().len(), 1);
}

/// A Reset ends the request with "reset by the server".
#[tokio::test(start_paused = true)]
async fn reset_is_an_error() {
    let (ep, r) = (endpoint(), responder().await);
    r.set(|b| b.mode = Mode::Reset);
    let err = get(&ep, &r, "/temp").await.unwrap_err();
    assert_eq!(err, TransportError::Reset);
    assert_eq!(err.to_string(), "reset by the server");
    assert_eq!(r.requests().len(), 1, "no retransmission after RST");
}

/// The separate CON response arrives twice (our ACK was "lost"): both are ACKed with the
/// same ACK, the second is counted as a duplicate and not processed (not reset as a stray).
#[tokio::test(start_paused = true)]
async fn duplicate_separate_response_is_acked_again_not_processed() {
    let (ep, r) = (endpoint(), responder().await);
    r.set(|b| {
        b.mode = Mode::Separate {
            delay: Duration::from_secs(1),
            con: true,
        };
        b.duplicate_separate = true;
    });
    let resp = get(&ep, &r, "/temp").await.unwrap();
    assert_eq!(resp.payload, b"21.5");
    tokio::time::sleep(Duration::from_millis(10)).await;
    let log = r.log();
    let acks: Vec<_> = log
        .iter()
        .filter(|x| x.mtype() == MessageType::Acknowledgement)
        .collect();
    assert_eq!(acks.len(), 2);
    assert_eq!(acks[0].mid(), acks[1].mid());
    assert!(
        !log.iter().any(|x| x.mtype() == MessageType::Reset),
        "a duplicate is not a stray"
    );
    assert_eq!(ep.stats().duplicates, 1);
    assert_eq!(ep.stats().resets_sent, 0);
}

/// NON requests: answered by a NON response; never retransmitted; NoResponse otherwise.
#[tokio::test(start_paused = true)]
async fn non_confirmable_requests() {
    let (ep, r) = (endpoint(), responder().await);
    let req = Request {
        confirmable: false,
        ..Request::get("temp")
    };
    let resp = ep
        .request(r.addr, req.clone(), &params(), BlockConfig::default())
        .await
        .unwrap();
    assert_eq!(resp.payload, b"21.5");
    assert_eq!(r.requests()[0].mtype(), MessageType::NonConfirmable);

    r.set(|b| b.mode = Mode::Silent);
    let start = Instant::now();
    let err = ep
        .request(r.addr, req, &params(), BlockConfig::default())
        .await
        .unwrap_err();
    assert_eq!(
        err,
        TransportError::NoResponse {
            waited: params().response_timeout
        }
    );
    assert_close(
        Instant::now() - start,
        params().response_timeout,
        "NON wait",
    );
    assert_eq!(r.requests().len(), 2, "a NON is sent once");
}

/// NSTART = 1: a second request to a server waits until the first is answered; a request
/// to another server does not wait.
#[tokio::test(start_paused = true)]
async fn nstart_one_queues_per_server() {
    let ep = endpoint();
    let (a, b) = (responder().await, responder().await);
    a.set(|x| {
        x.mode = Mode::Separate {
            delay: Duration::from_secs(5),
            con: true,
        }
    });
    let start = Instant::now();
    let t1 = tokio::spawn({
        let (ep, addr) = (ep.clone(), a.addr);
        async move {
            ep.request(
                addr,
                Request::get("temp"),
                &params(),
                BlockConfig::default(),
            )
            .await
            .map(|_| Instant::now())
        }
    });
    tokio::task::yield_now().await;
    let t2 = tokio::spawn({
        let (ep, addr) = (ep.clone(), a.addr);
        async move {
            ep.request(
                addr,
                Request::get("temp"),
                &params(),
                BlockConfig::default(),
            )
            .await
            .map(|_| Instant::now())
        }
    });
    tokio::task::yield_now().await;
    let t3 = tokio::spawn({
        let (ep, addr) = (ep.clone(), b.addr);
        async move {
            ep.request(
                addr,
                Request::get("temp"),
                &params(),
                BlockConfig::default(),
            )
            .await
            .map(|_| Instant::now())
        }
    });
    let done3 = t3.await.unwrap().unwrap();
    assert_close(
        done3 - start,
        Duration::ZERO,
        "the other server is not held up",
    );
    let done1 = t1.await.unwrap().unwrap();
    let done2 = t2.await.unwrap().unwrap();
    assert_close(done1 - start, Duration::from_secs(5), "first");
    let reqs = a.requests();
    assert_eq!(reqs.len(), 2);
    assert_close(reqs[0].at - start, Duration::ZERO, "first request");
    assert!(
        reqs[1].at >= done1,
        "the second request went out only after the first response"
    );
    assert_close(done2 - start, Duration::from_secs(10), "second");
}

/// Block2: a 10 KB body in 1024-byte blocks, in 256-byte blocks when asked for (early
/// negotiation), and refused past max_body.
#[tokio::test(start_paused = true)]
async fn block2_download() {
    let (ep, r) = (endpoint(), responder().await);
    let body: Vec<u8> = (0..10_240u32).map(|i| (i * 7 % 251) as u8).collect();
    r.set(|b| {
        b.resources.insert("large".into(), body.clone());
    });
    let resp = get(&ep, &r, "large").await.unwrap();
    assert_eq!(resp.payload, body);
    let reqs = r.requests();
    assert_eq!(reqs.len(), 10);
    assert_eq!(
        reqs[0].block(CoapOption::Block2),
        None,
        "no early negotiation at 1024"
    );
    for (i, q) in reqs.iter().enumerate().skip(1) {
        assert_eq!(q.block(CoapOption::Block2), Some((i as u32, false, 6)));
    }

    let small = BlockConfig {
        block_size: 256,
        ..Default::default()
    };
    let resp = ep
        .request(r.addr, Request::get("large"), &params(), small)
        .await
        .unwrap();
    assert_eq!(resp.payload, body);
    let reqs = &r.requests()[10..];
    assert_eq!(reqs.len(), 40);
    assert_eq!(
        reqs[0].block(CoapOption::Block2),
        Some((0, false, 4)),
        "early negotiation"
    );

    let capped = BlockConfig {
        max_body: 4096,
        ..Default::default()
    };
    let err = ep
        .request(r.addr, Request::get("large"), &params(), capped)
        .await
        .unwrap_err();
    assert_eq!(err, TransportError::TooLarge { limit: 4096 });
}

/// Block1: a 3000-byte PUT in 1024-byte blocks; a server that takes at most 256-byte
/// blocks answers 4.13 (with Size1, or with a Block1 size) and the transfer starts over
/// with smaller blocks; a payload that fits one message is switched to Block1 on 4.13.
#[tokio::test(start_paused = true)]
async fn block1_upload_shrinks_on_413() {
    let ep = endpoint();
    let body: Vec<u8> = (0..3000u32).map(|i| (i % 256) as u8).collect();
    let put = |payload: Vec<u8>| Request {
        payload,
        content_format: Some(42),
        ..Request::new(Method::Put, "fw")
    };

    let r = responder().await;
    let resp = ep
        .request(r.addr, put(body.clone()), &params(), BlockConfig::default())
        .await
        .unwrap();
    assert_eq!(resp.code, (2, 4));
    assert_eq!(r.uploaded().unwrap(), body);
    assert_eq!(r.requests().len(), 3);
    assert_eq!(
        r.requests()[0].block(CoapOption::Block1),
        Some((0, true, 6))
    );

    for hint in [TooLargeHint::Size1, TooLargeHint::Block1] {
        let r = responder().await;
        r.set(|b| {
            b.block1_max = Some(256);
            b.too_large_hint = hint;
        });
        let resp = ep
            .request(r.addr, put(body.clone()), &params(), BlockConfig::default())
            .await
            .unwrap();
        assert_eq!(resp.code, (2, 4), "{hint:?}");
        assert_eq!(r.uploaded().unwrap(), body, "{hint:?}");
        let reqs = r.requests();
        assert_eq!(reqs[0].block(CoapOption::Block1), Some((0, true, 6)));
        // Size1 = 256 → 256 at once; a Block1 hint of 256 likewise.
        assert_eq!(
            reqs[1].block(CoapOption::Block1),
            Some((0, true, 4)),
            "{hint:?}"
        );
        assert_eq!(reqs.len(), 1 + 12, "{hint:?}");
    }

    // 700 bytes fit one message; the server takes 256 at most.
    let r = responder().await;
    r.set(|b| b.block1_max = Some(256));
    let small: Vec<u8> = body[..700].to_vec();
    let resp = ep
        .request(
            r.addr,
            put(small.clone()),
            &params(),
            BlockConfig::default(),
        )
        .await
        .unwrap();
    assert_eq!(resp.code, (2, 4));
    assert_eq!(r.uploaded().unwrap(), small);
    assert_eq!(r.requests()[0].block(CoapOption::Block1), None);

    // A server that takes nothing we can make small enough.
    let r = responder().await;
    r.set(|b| b.block1_max = Some(8));
    let err = ep
        .request(r.addr, put(body.clone()), &params(), BlockConfig::default())
        .await
        .unwrap_err();
    assert_eq!(err, TransportError::TooLarge { limit: 8 });
}

async fn observed(ep: &Endpoint, r: &Responder) -> fieldgate_coap::transport::Observation {
    let obs = ep
        .observe(
            r.addr,
            Request::get("temp"),
            &params(),
            BlockConfig::default(),
        )
        .await
        .unwrap();
    assert!(obs.is_active());
    assert_eq!(obs.first().payload, b"21.5");
    assert_eq!(r.observers().len(), 1);
    obs
}

/// Notifications in order; a stale one (lower sequence number) discarded; a notification
/// without Observe ends the observation.
#[tokio::test(start_paused = true)]
async fn observe_orders_notifications_and_ends_without_observe() {
    let (ep, r) = (endpoint(), responder().await);
    let mut obs = observed(&ep, &r).await;
    assert_eq!(obs.first().observe, Some(1));
    for (seq, v) in [(5, "a"), (7, "b"), (6, "stale"), (8, "c")] {
        r.notify(Some(seq), 0x45, v.as_bytes(), false).await;
    }
    for v in ["a", "b", "c"] {
        let n = obs.next().await.unwrap();
        assert_eq!(n.response.payload, v.as_bytes());
        assert!(!n.last);
    }
    assert_eq!(ep.stats().stale_notifications, 1);
    assert_eq!(obs.last_notification_at(), Instant::now());
    r.notify(None, 0x84, b"", true).await;
    let n = obs.next().await.unwrap();
    assert!(n.last);
    assert_eq!(n.response.code, (4, 4));
    assert!(obs.next().await.is_none());
    assert!(!obs.is_active());
}

/// RFC 7641 §3.4: a notification that arrives more than 128 s after the last is fresh
/// whatever its number (the server may have restarted); within 128 s an older one is not.
/// Sequence numbers wrap at 2^24.
#[tokio::test(start_paused = true)]
async fn observe_freshness_128_seconds_and_wrap() {
    let (ep, r) = (endpoint(), responder().await);
    let mut obs = observed(&ep, &r).await;
    assert_eq!(obs.first().observe, Some(1));
    // 1 → 2^24 − 2 is a step back (more than 2^23 ahead), not forward.
    r.notify(Some(0x00ff_fffe), 0x45, b"back", false).await;
    // Forward in steps under 2^23 to just before the wrap, then over it.
    r.notify(Some(0x007f_ffff), 0x45, b"x", false).await;
    assert_eq!(
        obs.next().await.unwrap().response.observe,
        Some(0x007f_ffff)
    );
    r.notify(Some(0x00ff_fffe), 0x45, b"y", false).await;
    assert_eq!(
        obs.next().await.unwrap().response.observe,
        Some(0x00ff_fffe)
    );
    r.notify(Some(2), 0x45, b"wrapped", false).await;
    assert_eq!(obs.next().await.unwrap().response.payload, b"wrapped");
    tokio::time::sleep(Duration::from_secs(100)).await;
    r.notify(Some(1), 0x45, b"old", false).await;
    tokio::time::sleep(Duration::from_secs(29)).await;
    r.notify(Some(1), 0x45, b"after restart", false).await;
    let n = obs.next().await.unwrap();
    assert_eq!(n.response.payload, b"after restart");
    assert_eq!(ep.stats().stale_notifications, 2);
}

/// A CON notification repeated with the same message id is acknowledged twice and
/// delivered once.
#[tokio::test(start_paused = true)]
async fn duplicate_con_notification_delivered_once() {
    let (ep, r) = (endpoint(), responder().await);
    let mut obs = observed(&ep, &r).await;
    let o = r.observers()[0].clone();
    r.notify_one(&o, 0x1234, Some(10), 0x45, b"ten", true).await;
    r.notify_one(&o, 0x1234, Some(10), 0x45, b"ten", true).await;
    r.notify_one(&o, 0x1235, Some(11), 0x45, b"eleven", true)
        .await;
    assert_eq!(obs.next().await.unwrap().response.payload, b"ten");
    assert_eq!(obs.next().await.unwrap().response.payload, b"eleven");
    tokio::time::sleep(Duration::from_millis(10)).await;
    let acks: Vec<u16> = r
        .log()
        .iter()
        .filter(|x| x.mtype() == MessageType::Acknowledgement)
        .map(|x| x.mid())
        .collect();
    assert_eq!(acks, vec![0x1234, 0x1234, 0x1235]);
    assert_eq!(ep.stats().duplicates, 1);
    assert_eq!(
        ep.stats().stale_notifications,
        0,
        "the duplicate never reached the freshness check"
    );
}

/// cancel() deregisters (GET, Observe = 1, same token); a notification that comes anyway
/// is reset, as is one for a dropped observation.
#[tokio::test(start_paused = true)]
async fn cancel_deregisters_and_strays_are_reset() {
    let (ep, r) = (endpoint(), responder().await);
    let obs = observed(&ep, &r).await;
    let token = r.observers()[0].token.clone();
    let o = r.observers()[0].clone();
    obs.cancel().await.unwrap();
    let last = r.requests().last().unwrap().clone();
    assert_eq!(last.observe(), Some(1));
    assert_eq!(last.packet.get_token(), token.as_slice());
    assert!(r.observers().is_empty());

    r.notify_one(&o, 0x2000, Some(50), 0x45, b"late", true)
        .await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let rst = r
        .log()
        .into_iter()
        .filter(|x| x.mtype() == MessageType::Reset)
        .collect::<Vec<_>>();
    assert_eq!(rst.len(), 1);
    assert_eq!(rst[0].mid(), 0x2000);

    let obs2 = observed(&ep, &r).await;
    drop(obs2);
    r.notify(Some(60), 0x45, b"nobody", false).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        r.log()
            .iter()
            .filter(|x| x.mtype() == MessageType::Reset)
            .count(),
        2,
        "a NON stray is reset too"
    );
}

/// Re-registration uses the same token; notifications go on; silence deadline follows
/// Max-Age.
#[tokio::test(start_paused = true)]
async fn reregister_with_same_token() {
    let (ep, r) = (endpoint(), responder().await);
    r.set(|b| b.max_age = Some(30));
    let mut obs = observed(&ep, &r).await;
    assert_eq!(obs.max_age(), Duration::from_secs(30));
    let registered = obs.last_notification_at();
    assert_eq!(
        obs.silence_deadline(Duration::from_secs(5)),
        registered + Duration::from_secs(35)
    );
    let token = r.observers()[0].token.clone();
    tokio::time::sleep(Duration::from_secs(40)).await;
    let again = obs.reregister().await.unwrap();
    assert_eq!(again.observe, Some(2));
    let reqs = r.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].packet.get_token(), token.as_slice());
    assert_eq!(reqs[1].observe(), Some(0));
    assert_eq!(r.observers().len(), 1);
    assert!(obs.last_notification_at() > registered);
    r.notify(Some(3), 0x45, b"still here", true).await;
    assert_eq!(obs.next().await.unwrap().response.payload, b"still here");
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(
        !r.log().iter().any(|x| x.mtype() == MessageType::Reset),
        "the route stayed in place during re-registration"
    );
}

/// A reader that falls behind: notifications beyond the buffer are not taken; a CON one
/// is left unacknowledged (the server will send it again), and counted.
#[tokio::test(start_paused = true)]
async fn slow_reader_backpressure() {
    let cfg = EndpointConfig {
        notification_buffer: 2,
        ..Default::default()
    };
    let ep = Endpoint::bind(cfg, CancellationToken::new()).unwrap();
    let r = responder().await;
    let mut obs = observed(&ep, &r).await;
    for seq in 2..6 {
        r.notify(Some(seq), 0x45, format!("{seq}").as_bytes(), true)
            .await;
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let acks = r
        .log()
        .iter()
        .filter(|x| x.mtype() == MessageType::Acknowledgement)
        .count();
    assert_eq!(acks, 2);
    assert_eq!(ep.stats().overflow, 2);
    assert_eq!(obs.next().await.unwrap().response.payload, b"2");
    assert_eq!(obs.next().await.unwrap().response.payload, b"3");
    // The server's retransmission of 4 now fits.
    let o = r.observers()[0].clone();
    r.notify_one(&o, 0x7003, Some(4), 0x45, b"4", true).await;
    assert_eq!(obs.next().await.unwrap().response.payload, b"4");
}

/// A server that does not offer Observe: the first response has no Observe option.
#[tokio::test(start_paused = true)]
async fn observe_declined() {
    let (ep, r) = (endpoint(), responder().await);
    let mut obs = ep
        .observe(
            r.addr,
            Request::get("nope"),
            &params(),
            BlockConfig::default(),
        )
        .await
        .unwrap();
    assert!(!obs.is_active());
    assert_eq!(obs.first().code, (4, 4));
    assert!(obs.next().await.is_none());
    let put = ep
        .observe(
            r.addr,
            Request::new(Method::Put, "temp"),
            &params(),
            BlockConfig::default(),
        )
        .await;
    assert!(matches!(put, Err(TransportError::Invalid(_))));
    let long = Request::get(&"x".repeat(256));
    assert!(matches!(
        ep.request(r.addr, long, &params(), BlockConfig::default())
            .await,
        Err(TransportError::Invalid(_))
    ));
}

/// A block-wise notification: the rest is fetched with GET + Block2, without Observe.
#[tokio::test(start_paused = true)]
async fn block_wise_notification() {
    let (ep, r) = (endpoint(), responder().await);
    let body: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
    r.set(|b| {
        b.resources.insert("temp".into(), body.clone());
    });
    let mut obs = observed_any(&ep, &r).await;
    assert_eq!(obs.first().payload, body);
    let first_block = &body[..1024];
    let o = r.observers()[0].clone();
    // A notification carrying block 0 of 3 (M = 1, SZX 6).
    let mut p = coap_lite::Packet::new();
    p.header.set_type(MessageType::NonConfirmable);
    p.header.code = coap_lite::MessageClass::from(0x45);
    p.header.message_id = 0x3000;
    p.set_token(o.token.clone());
    p.add_option_as(
        CoapOption::Observe,
        coap_lite::option_value::OptionValueU32(9),
    );
    p.add_option(CoapOption::Block2, vec![0x0e]);
    p.payload = first_block.to_vec();
    r.send(&p, o.peer).await;
    let n = obs.next().await.unwrap();
    assert_eq!(n.response.payload, body);
    assert_eq!(n.response.observe, Some(9));
    let follow: Vec<_> = r.requests().into_iter().skip(3).collect();
    assert_eq!(follow.len(), 2);
    assert!(follow.iter().all(|q| q.observe().is_none()));
    assert_eq!(follow[0].block(CoapOption::Block2), Some((1, false, 6)));
}

async fn observed_any(ep: &Endpoint, r: &Responder) -> fieldgate_coap::transport::Observation {
    ep.observe(
        r.addr,
        Request::get("temp"),
        &params(),
        BlockConfig::default(),
    )
    .await
    .unwrap()
}

/// Malformed datagrams are counted and dropped, a malformed CON with a readable header is
/// reset, a ping (empty CON) is reset, and the endpoint keeps working.
#[tokio::test(start_paused = true)]
async fn malformed_datagrams_are_counted_and_dropped() {
    let (ep, r) = (endpoint(), responder().await);
    let target: SocketAddr = format!("127.0.0.1:{}", ep.local_addr_v4().unwrap().port())
        .parse()
        .unwrap();
    let bad: &[&[u8]] = &[
        &[0x40, 0x01],                                        // truncated header
        &[0x60, 0x45, 0x00, 0x01, 0xf0],                      // ACK, option delta 15
        &[0x59, 0x45, 0x00, 0x02, 1, 2, 3, 4, 5, 6, 7, 8, 9], // NON, token length 9
        &[0x80, 0x45, 0x00, 0x03],                            // version 2
        &[0x40, 0x45, 0x00, 0x04, 0xd1],                      // CON, option delta cut short
    ];
    for b in bad {
        r.send_raw(b, target).await;
    }
    let mut rng_bytes = Vec::new();
    for i in 0..300usize {
        let mut b = vec![0u8; i % 40];
        rand::fill(&mut b[..]);
        if !b.is_empty() {
            b[0] = (b[0] & 0x0f) | 0x60; // ACK/…, version 1: never answered
        }
        rng_bytes.push(b);
    }
    for b in &rng_bytes {
        r.send_raw(b, target).await;
    }
    for _ in 0..100 {
        if ep.stats().malformed >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let st = ep.stats();
    assert!(st.malformed >= 5, "{st:?}");
    tokio::time::sleep(Duration::from_millis(10)).await;
    let rst: Vec<u16> = r
        .log()
        .iter()
        .filter(|x| x.mtype() == MessageType::Reset)
        .map(|x| x.mid())
        .collect();
    assert_eq!(rst, vec![4], "only the CON with a readable header is reset");

    // A CoAP ping.
    r.send_raw(&[0x40, 0x00, 0x12, 0x34], target).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        r.log()
            .iter()
            .rfind(|x| x.mtype() == MessageType::Reset)
            .unwrap()
            .mid(),
        0x1234
    );

    let resp = get(&ep, &r, "temp").await.unwrap();
    assert_eq!(resp.payload, b"21.5");
}

/// IPv6 loopback: the IPv6 socket carries requests to [::1].
#[tokio::test(start_paused = true)]
async fn ipv6_loopback() {
    let Ok(r) = Responder::start("[::1]:0").await else {
        eprintln!("no IPv6 loopback here: skipped");
        return;
    };
    let ep = endpoint();
    assert!(ep.local_addr_v6().is_some());
    let resp = ep
        .request(
            r.addr,
            Request::get("temp"),
            &params(),
            BlockConfig::default(),
        )
        .await
        .unwrap();
    assert_eq!(resp.payload, b"21.5");
    assert!(r.requests()[0].from.is_ipv6());
    let mut obs = ep
        .observe(
            r.addr,
            Request::get("temp"),
            &params(),
            BlockConfig::default(),
        )
        .await
        .unwrap();
    r.notify(Some(5), 0x45, b"v6", true).await;
    assert_eq!(obs.next().await.unwrap().response.payload, b"v6");
}

/// Cancelling the token stops the endpoint: waiting calls return Stopped, the receive
/// task ends, and new calls fail at once.
#[tokio::test(start_paused = true)]
async fn cancellation_stops_everything() {
    let cancel = CancellationToken::new();
    let ep = Endpoint::bind(EndpointConfig::default(), cancel.clone()).unwrap();
    let r = responder().await;
    r.set(|b| b.mode = Mode::Silent);
    let pending = tokio::spawn({
        let ep = ep.clone();
        let addr = r.addr;
        async move {
            ep.request(
                addr,
                Request::get("temp"),
                &params(),
                BlockConfig::default(),
            )
            .await
        }
    });
    let r2 = responder().await;
    let mut obs = observed(&ep, &r2).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    cancel.cancel();
    assert_eq!(pending.await.unwrap(), Err(TransportError::Stopped));
    assert!(obs.next().await.is_none());
    tokio::time::timeout(Duration::from_secs(1), ep.closed())
        .await
        .expect("receive task ended");
    assert_eq!(get(&ep, &r, "temp").await, Err(TransportError::Stopped));
}

/// The sockets get the configured receive buffer (up to the kernel's cap), larger than the
/// system's default, so that a burst of notifications is not dropped by the kernel.
#[tokio::test]
async fn receive_buffer_is_enlarged() {
    let read = |p: &str| -> usize { std::fs::read_to_string(p).unwrap().trim().parse().unwrap() };
    let (default, max) = (
        read("/proc/sys/net/core/rmem_default"),
        read("/proc/sys/net/core/rmem_max"),
    );
    let want = 4usize << 20;
    let ep = endpoint();
    let got = ep.receive_buffer().unwrap();
    // Linux reports twice what was set (its bookkeeping); the cap is rmem_max.
    assert!(got >= 2 * want.min(max), "{got} < 2 x min({want}, {max})");
    assert!(
        got > 2 * default || max <= default,
        "{got} not above the default {default}"
    );
    let plain = Endpoint::bind(
        EndpointConfig {
            receive_buffer: None,
            ..EndpointConfig::default()
        },
        CancellationToken::new(),
    )
    .unwrap();
    assert_eq!(plain.receive_buffer().unwrap(), default);
}
