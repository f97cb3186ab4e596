//! Demultiplexing datagrams on a shared UDP socket to connections.
//!
//! The fast path is the remote address, learnt once ICE has seen a valid
//! binding request from it. Before that, STUN binding requests carry
//! `USERNAME = <our ufrag>:<their ufrag>`, and the SFU chooses our ufrag per
//! connection, so one map lookup finds the owner. No linear scans.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;

const STUN_MAGIC: u32 = 0x2112_A442;
const ATTR_USERNAME: u16 = 0x0006;

/// Routes datagrams to connection keys.
pub struct Demux<K: Copy + Eq + Hash> {
    by_addr: HashMap<SocketAddr, K>,
    by_ufrag: HashMap<String, K>,
}

impl<K: Copy + Eq + Hash> Default for Demux<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Copy + Eq + Hash> Demux<K> {
    pub fn new() -> Self {
        Demux {
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
        }
    }

    pub fn insert_ufrag(&mut self, ufrag: &str, key: K) {
        self.by_ufrag.insert(ufrag.to_string(), key);
    }

    pub fn has_ufrag(&self, ufrag: &str) -> bool {
        self.by_ufrag.contains_key(ufrag)
    }

    /// Remember that `addr` belongs to `key` (after the peer accepted it).
    pub fn learn_addr(&mut self, addr: SocketAddr, key: K) {
        self.by_addr.insert(addr, key);
    }

    /// Forget everything about `key`.
    pub fn remove(&mut self, key: K) {
        self.by_addr.retain(|_, k| *k != key);
        self.by_ufrag.retain(|_, k| *k != key);
    }

    /// The connection a datagram from `source` belongs to, and whether the
    /// answer came from the address map (true) or a STUN username (false).
    pub fn route(&self, source: SocketAddr, buf: &[u8]) -> Option<(K, bool)> {
        if let Some(k) = self.by_addr.get(&source) {
            return Some((*k, true));
        }
        let ufrag = stun_local_ufrag(buf)?;
        self.by_ufrag.get(ufrag).map(|k| (*k, false))
    }
}

/// The local (first) part of the USERNAME attribute of a STUN message.
pub fn stun_local_ufrag(buf: &[u8]) -> Option<&str> {
    if buf.len() < 20 || buf[0] & 0xC0 != 0 {
        return None;
    }
    let magic = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if magic != STUN_MAGIC {
        return None;
    }
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    let body = buf.get(20..20 + len)?;
    let mut i = 0;
    while i + 4 <= body.len() {
        let ty = u16::from_be_bytes([body[i], body[i + 1]]);
        let alen = u16::from_be_bytes([body[i + 2], body[i + 3]]) as usize;
        let value = body.get(i + 4..i + 4 + alen)?;
        if ty == ATTR_USERNAME {
            let s = std::str::from_utf8(value).ok()?;
            return s.split(':').next();
        }
        i += 4 + ((alen + 3) & !3);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stun_with_username(user: &str) -> Vec<u8> {
        let mut attr = Vec::new();
        attr.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
        attr.extend_from_slice(&(user.len() as u16).to_be_bytes());
        attr.extend_from_slice(user.as_bytes());
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        // A second attribute after USERNAME, as real requests have.
        attr.extend_from_slice(&[0x80, 0x22, 0, 4, b'h', b'i', b'b', b'k']);
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(attr.len() as u16).to_be_bytes());
        m.extend_from_slice(&STUN_MAGIC.to_be_bytes());
        m.extend_from_slice(&[7u8; 12]);
        m.extend_from_slice(&attr);
        m
    }

    #[test]
    fn parses_username() {
        let m = stun_with_username("srvfrag:clientfrag");
        assert_eq!(stun_local_ufrag(&m), Some("srvfrag"));
    }

    #[test]
    fn rejects_garbage_and_truncation() {
        assert_eq!(stun_local_ufrag(&[0u8; 5]), None);
        assert_eq!(stun_local_ufrag(&[0x80u8; 40]), None); // RTP-looking
        let m = stun_with_username("abc:def");
        for cut in 0..m.len() - 1 {
            // Must never panic; may or may not find the name.
            let _ = stun_local_ufrag(&m[..cut]);
        }
        let mut bad_len = m.clone();
        bad_len[3] = 0xff;
        assert_eq!(stun_local_ufrag(&bad_len), None);
    }

    #[test]
    fn routes_by_addr_then_ufrag() {
        let mut d: Demux<u32> = Demux::new();
        d.insert_ufrag("one", 1);
        d.insert_ufrag("two", 2);
        let a: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let m = stun_with_username("two:x");
        assert_eq!(d.route(a, &m), Some((2, false)));
        assert_eq!(d.route(a, &[0x80, 0, 0, 0]), None);
        d.learn_addr(a, 2);
        assert_eq!(d.route(a, &[0x80, 0, 0, 0]), Some((2, true)));
        d.remove(2);
        assert_eq!(d.route(a, &m), None);
    }
}
