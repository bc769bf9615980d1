//! Streaming head + tail capture of a command's output: memory O(cap) however much the
//! command writes, every byte counted (`TERMINAL_ENV.md` §5.2).

/// Output captured from one stream: the first bytes, the last bytes, and the total written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapturedOutput {
    /// The first bytes (up to the head share of the cap).
    pub head: Vec<u8>,
    /// The last bytes (up to the rest of the cap); empty when everything fit in `head`.
    pub tail: Vec<u8>,
    /// Bytes written in total.
    pub total: u64,
}

impl CapturedOutput {
    /// Whether bytes were dropped between head and tail.
    pub fn truncated(&self) -> bool {
        self.total > (self.head.len() + self.tail.len()) as u64
    }

    /// Bytes dropped between head and tail.
    pub fn omitted(&self) -> u64 {
        self.total
            .saturating_sub((self.head.len() + self.tail.len()) as u64)
    }
}

/// Captures a stream into head + tail under a byte cap.
#[derive(Debug, Clone)]
pub struct Capture {
    head_cap: usize,
    tail_cap: usize,
    head: Vec<u8>,
    tail: std::collections::VecDeque<u8>,
    total: u64,
}

impl Capture {
    /// A capture keeping at most `cap` bytes: `head_fraction` of them from the start, the rest
    /// from the end.
    pub fn new(cap: usize, head_fraction: f64) -> Self {
        let fraction = if head_fraction.is_finite() {
            head_fraction.clamp(0.0, 1.0)
        } else {
            0.25
        };
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let head_cap = ((cap as f64) * fraction).floor() as usize;
        Self {
            head_cap: head_cap.min(cap),
            tail_cap: cap - head_cap.min(cap),
            head: Vec::new(),
            tail: std::collections::VecDeque::new(),
            total: 0,
        }
    }

    /// Adds bytes.
    pub fn push(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        let room = self.head_cap - self.head.len();
        if room > 0 {
            let take = room.min(data.len());
            self.head.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        if self.tail_cap == 0 || data.is_empty() {
            return;
        }
        if data.len() >= self.tail_cap {
            self.tail.clear();
            self.tail.extend(&data[data.len() - self.tail_cap..]);
            return;
        }
        let overflow = (self.tail.len() + data.len()).saturating_sub(self.tail_cap);
        self.tail.drain(..overflow);
        self.tail.extend(data);
    }

    /// The captured output.
    pub fn finish(self) -> CapturedOutput {
        CapturedOutput {
            head: self.head,
            tail: self.tail.into_iter().collect(),
            total: self.total,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keeps_head_and_tail() {
        let mut c = Capture::new(8, 0.25);
        c.push(b"0123456789");
        c.push(b"abcdef");
        let out = c.finish();
        assert_eq!(out.head, b"01");
        assert_eq!(out.tail, b"9abcdef"[1..].to_vec());
        assert_eq!(out.total, 16);
        assert_eq!(out.omitted(), 8);
        assert!(out.truncated());
    }

    proptest! {
        #[test]
        fn equals_the_prefix_and_suffix_of_the_whole(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..50), 0..20), cap in 0usize..64) {
            let mut c = Capture::new(cap, 0.25);
            let mut all = Vec::new();
            for chunk in &chunks { c.push(chunk); all.extend_from_slice(chunk); }
            let out = c.finish();
            prop_assert_eq!(out.total, all.len() as u64);
            prop_assert!(out.head.len() + out.tail.len() <= cap);
            prop_assert!(all.starts_with(&out.head));
            prop_assert!(all.ends_with(&out.tail));
            if all.len() <= cap { let mut joined = out.head.clone(); joined.extend(&out.tail); prop_assert_eq!(joined, all); }
        }
    }
}
