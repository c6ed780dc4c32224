//! Properties of the protocol core that must hold for any input.

mod support;

use proptest::prelude::*;
use support::*;
use switchboard_core::codec::{self as frame, Decoded, Decoder, Limits};
use tungstenite::protocol::frame::coding::{Control, OpCode};

const LIMITS: Limits = Limits { max_frame: 1 << 20, max_message: 1 << 20 };

/// A stream a client might send after the upgrade: messages (some fragmented), pings, junk.
fn client_stream() -> impl Strategy<Value = Vec<u8>> {
    let frame = prop_oneof![
        (proptest::collection::vec(any::<u8>(), 0..300), any::<bool>()).prop_map(|(payload, text)| client_frame(
            if text { 0x81 } else { 0x82 },
            &payload,
            true
        )),
        "[a-zé]{0,40}".prop_map(|s| text(&s)),
        proptest::collection::vec(any::<u8>(), 0..125).prop_map(|p| client_frame(0x89, &p, true)),
        ("[a-z]{1,20}", "[a-z]{1,20}").prop_map(|(a, b)| {
            [client_frame(0x01, a.as_bytes(), true), client_frame(0x80, b.as_bytes(), true)].concat()
        }),
        proptest::collection::vec(any::<u8>(), 0..20),
    ];
    proptest::collection::vec(frame, 0..12).prop_map(|frames| frames.concat())
}

/// Cut points inside `len` bytes.
fn cuts(stream: &[u8], points: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = points.iter().map(|p| p % (stream.len() + 1)).collect();
    points.sort_unstable();
    let mut pieces = Vec::new();
    let mut start = 0;
    for point in points.into_iter().chain([stream.len()]) {
        pieces.push(stream[start..point].to_vec());
        start = point;
    }
    pieces
}

/// Runs `pieces` through a fresh echo connection (its request head cut in two) and returns
/// everything observable.
fn run_hub(pieces: &[Vec<u8>]) -> (Vec<u8>, bool) {
    let mut sim = Sim::new(Default::default());
    let id = sim.accept();
    let request = upgrade_request("/echo", "").into_bytes();
    let (first, second) = request.split_at(request.len() / 2);
    sim.send(id, first);
    sim.send(id, second);
    for piece in pieces {
        sim.send(id, piece);
    }
    let out = sim.take_output(id);
    (out, sim.is_closed(id))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_chunking_gives_the_same_output(stream in client_stream(), points in proptest::collection::vec(any::<usize>(), 0..16)) {
        let whole = run_hub(std::slice::from_ref(&stream));
        let chunked = run_hub(&cuts(&stream, &points));
        prop_assert_eq!(whole, chunked);
    }

    #[test]
    fn decoder_sees_the_same_units_under_any_chunking(stream in client_stream(), points in proptest::collection::vec(any::<usize>(), 0..16)) {
        let mut whole = Vec::new();
        Decoder::default().feed(&stream, LIMITS, &mut whole);
        let mut chunked = Vec::new();
        let mut decoder = Decoder::default();
        for piece in cuts(&stream, &points) {
            decoder.feed(&piece, LIMITS, &mut chunked);
        }
        prop_assert_eq!(whole, chunked);
    }

    #[test]
    fn encode_then_decode_round_trips(payload in proptest::collection::vec(any::<u8>(), 0..70_000), text in any::<bool>()) {
        let payload = if text { String::from_utf8_lossy(&payload).into_owned().into_bytes() } else { payload };
        let encoded = frame::encode(frame::data_opcode(text), false, &payload);
        let frames = server_frames(&encoded);
        prop_assert_eq!(frames.len(), 1);
        prop_assert_eq!(&frames[0].1, &payload);
        // Masked the way a client would, our decoder reads the same message back.
        let mut decoded = Vec::new();
        Decoder::default().feed(&client_frame(if text { 0x81 } else { 0x82 }, &payload, true), LIMITS, &mut decoded);
        prop_assert_eq!(decoded, vec![Decoded::Message { text, data: payload }]);
    }

    #[test]
    fn close_frames_round_trip(code in 1000u16..5000, reason in "[a-z ]{0,200}") {
        let frames = server_frames(&frame::encode_close(code, &reason));
        prop_assert_eq!(frames[0].0.opcode, OpCode::Control(Control::Close));
        prop_assert!(frames[0].1.len() <= 125);
        prop_assert_eq!(u16::from_be_bytes([frames[0].1[0], frames[0].1[1]]), code);
    }

    #[test]
    fn arbitrary_bytes_never_panic(head in proptest::collection::vec(any::<u8>(), 0..400), body in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut sim = Sim::new(Default::default());
        let raw = sim.accept();
        sim.send(raw, &head);
        sim.take_output(raw);
        let open = sim.open("/echo");
        sim.send(open, &body);
        sim.take_output(open);
        let mut decoder = Decoder::default();
        let mut out = Vec::new();
        decoder.feed(&body, LIMITS, &mut out);
    }
}
