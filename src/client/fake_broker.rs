//! A scripted stand-in for the broker, for unit tests of the client and the CLI: it
//! accepts one loopback connection and runs a test's script on it, so the test decides
//! exactly which frames arrive and in what order.

use crate::protocol::{self, Decoder, Frame, PROTOCOL_VERSION};
use bytes::{Bytes, BytesMut};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// The maximum payload size the fake broker announces in HELLO_OK, in bytes.
pub(crate) const MAX_PAYLOAD: u32 = 1000;

/// The broker side of one test connection.
pub(crate) struct FakeBroker {
    pub(crate) stream: TcpStream,
    decoder: Decoder,
    buf: BytesMut,
}

impl FakeBroker {
    /// Returns the next frame from the client, or `None` once the client has closed the
    /// connection.
    pub(crate) fn read_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf).expect("valid frame") {
                return Some(frame);
            }
            let mut chunk = [0u8; 4096];
            // A client that closes with unread data in its socket makes the kernel send
            // a reset instead of a FIN.
            let read = match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => return None,
                result => result.expect("read from client"),
            };
            self.buf.extend_from_slice(&chunk[..read]);
        }
    }

    pub(crate) fn expect_frame(&mut self) -> Frame {
        self.read_frame()
            .expect("client closed the connection early")
    }

    pub(crate) fn send(&mut self, frame: Frame) {
        let mut out = BytesMut::new();
        frame.encode(&mut out);
        self.stream.write_all(&out).expect("write to client");
    }

    pub(crate) fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to client");
    }

    /// Replies to the next PING with its PONG and returns the frames that came before it.
    pub(crate) fn answer_ping(&mut self) -> Vec<Frame> {
        let mut before = Vec::new();
        loop {
            match self.expect_frame() {
                Frame::Ping { token } => {
                    self.send(Frame::Pong { token });
                    return before;
                }
                other => before.push(other),
            }
        }
    }
}

fn hello_ok() -> Frame {
    Frame::HelloOk {
        version: PROTOCOL_VERSION,
        max_payload: MAX_PAYLOAD,
        max_frame: protocol::max_frame_for(MAX_PAYLOAD),
        shards: 2,
        ack_timeout_ms: 1500,
    }
}

/// Starts a fake broker that accepts one connection and runs `script` on it. With
/// `handshake` set it first reads HELLO and replies with HELLO_OK.
pub(crate) fn fake_broker(
    handshake: bool,
    script: impl FnOnce(&mut FakeBroker) + Send + 'static,
) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("local address");
    let handle = thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set read timeout");
        let mut broker = FakeBroker {
            stream,
            decoder: Decoder::new(MAX_PAYLOAD),
            buf: BytesMut::new(),
        };
        if handshake {
            let hello = broker.expect_frame();
            assert_eq!(
                hello,
                Frame::Hello {
                    version: PROTOCOL_VERSION
                }
            );
            broker.send(hello_ok());
        }
        script(&mut broker);
    });
    (addr, handle)
}

/// Returns a first-delivery MESSAGE whose payload is `m{seq}`.
pub(crate) fn message(sub_id: u32, seq: u64) -> Frame {
    Frame::Message {
        sub_id,
        seq,
        timestamp: 1_000 + seq,
        delivery_count: 1,
        payload: Bytes::from(format!("m{seq}")),
    }
}
