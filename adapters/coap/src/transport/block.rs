//! Block-wise transfers (RFC 7959), transparent to the caller.
//!
//! Block2 (responses): a response carrying Block2 with M = 1 is followed by requests for
//! NUM + 1 (the same request without payload, with Block2) until M = 0. The blocks must
//! arrive in sequence and, but for the last, full; the body is limited to
//! [`BlockConfig::max_body`] (Size2 is checked up front when given); when the ETag changes
//! midway the resource changed and the transfer starts over (twice at most). A smaller
//! block size than the server's is asked for when configured (early negotiation in the
//! first request when `block_size` < 1024).
//!
//! Block1 (requests): a payload larger than `block_size` is sent in blocks, each awaiting
//! 2.31 Continue (any 2.xx is taken as "go on"); Size1 tells the total in the first block.
//! The server may ask for smaller blocks in its answer (its SZX is then used), or refuse
//! with 4.13 Request Entity Too Large: the transfer then starts over with smaller blocks
//! — the server's Block1 size or the largest power of two within its Size1, at most half
//! the size refused — down to 16 bytes, then [`TransportError::TooLarge`].

use std::net::SocketAddr;
use std::sync::Arc;

use coap_lite::CoapOption;

use super::codec::{self, BlockOpt, Extra, Message};
use super::endpoint::Inner;
use super::error::TransportError;
use super::exchange::round_trip;
use super::params::TransmissionParams;
use super::types::{Method, Request, Response};

/// Block-wise transfer settings, per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    /// Block size in bytes: 16, 32, 64, 128, 256, 512 or 1024 (SZX 0–6; default 1024).
    /// Payloads above it are sent with Block1; below 1024 it is also requested for
    /// responses (Block2 early negotiation).
    pub block_size: usize,
    /// Largest response body accepted, in bytes (default 64 KiB); a larger one fails
    /// with [`TransportError::TooLarge`] as soon as that is known.
    pub max_body: usize,
}

impl Default for BlockConfig {
    fn default() -> Self {
        BlockConfig {
            block_size: 1024,
            max_body: 64 * 1024,
        }
    }
}

impl BlockConfig {
    /// Checks `block_size`.
    pub fn validate(&self) -> Result<(), String> {
        if !(16..=1024).contains(&self.block_size) || !self.block_size.is_power_of_two() {
            return Err(format!(
                "block size must be 16, 32, 64, 128, 256, 512 or 1024, not {}",
                self.block_size
            ));
        }
        Ok(())
    }

    /// The size exponent: block_size = 16 · 2^SZX.
    pub fn szx(&self) -> u8 {
        szx_of(self.block_size)
    }
}

fn szx_of(size: usize) -> u8 {
    (size.clamp(16, 1024).trailing_zeros() - 4) as u8
}

/// The largest power of two ≤ `n` (0 for 0).
fn pow2_floor(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        1 << (usize::BITS - 1 - n.leading_zeros())
    }
}

fn code(m: &Message) -> (u8, u8) {
    (m.code >> 5, m.code & 0x1f)
}

/// A request, block-wise where needed, with its complete response.
pub(crate) async fn request(
    inner: &Arc<Inner>,
    peer: SocketAddr,
    req: &Request,
    params: &TransmissionParams,
    cfg: &BlockConfig,
) -> Result<Response, TransportError> {
    let first = if req.payload.len() > cfg.block_size {
        upload(inner, peer, req, params, cfg).await?
    } else {
        let early = early_block2(req, cfg);
        let m = round_trip(
            inner,
            peer,
            codec::request_packet(
                req,
                &req.payload,
                Extra {
                    block2: early,
                    ..Default::default()
                },
            ),
            params,
        )
        .await?;
        if code(&m) == (4, 13) && smaller_blocks_may_help(&m, req.payload.len()) {
            // The server will not take this payload in one message.
            upload_after_413(inner, peer, req, params, cfg, &m).await?
        } else {
            m
        }
    };
    download_rest(inner, peer, req, params, cfg, first).await
}

/// Block2 NUM 0 with our size, when we want smaller blocks than the largest.
pub(crate) fn early_block2(req: &Request, cfg: &BlockConfig) -> Option<BlockOpt> {
    (req.method == Method::Get && cfg.block_size < 1024).then(|| BlockOpt {
        num: 0,
        more: false,
        szx: cfg.szx(),
    })
}

async fn upload_after_413(
    inner: &Arc<Inner>,
    peer: SocketAddr,
    req: &Request,
    params: &TransmissionParams,
    cfg: &BlockConfig,
    refusal: &Message,
) -> Result<Message, TransportError> {
    let size = shrink(refusal, req.payload.len())?;
    let cfg = BlockConfig {
        block_size: size,
        ..cfg.clone()
    };
    upload(inner, peer, req, params, &cfg).await
}

/// Whether a 4.13 to a single message of `len` bytes asks for blocks: not when the payload
/// is already within the server's Size1, nor when it is too short to split (the smallest
/// block is 16 bytes). Then the 4.13 is the server's answer, returned as it is.
fn smaller_blocks_may_help(m: &Message, len: usize) -> bool {
    let size1 = codec::size1(&m.packet).ok().flatten();
    len > 16 && size1.is_none_or(|s| (s as usize) < len)
}

/// The block size to try after a 4.13 to a message carrying `refused` bytes.
fn shrink(m: &Message, refused: usize) -> Result<usize, TransportError> {
    let size1 = codec::size1(&m.packet)?.map(|s| s as usize);
    let mut next = pow2_floor(refused.saturating_sub(1)).min(1024);
    if let Some(b) = BlockOpt::get(&m.packet, CoapOption::Block1)? {
        next = next.min(b.size());
    }
    if let Some(s) = size1 {
        next = next.min(pow2_floor(s));
    }
    if next < 16 {
        return Err(TransportError::TooLarge {
            limit: size1.unwrap_or(refused),
        });
    }
    Ok(next)
}

/// Sends `req.payload` in Block1 blocks of `cfg.block_size` (shrinking on 4.13) and
/// returns the answer to the last block.
async fn upload(
    inner: &Arc<Inner>,
    peer: SocketAddr,
    req: &Request,
    params: &TransmissionParams,
    cfg: &BlockConfig,
) -> Result<Message, TransportError> {
    let total = req.payload.len();
    let mut size = cfg.block_size;
    'restart: loop {
        let mut offset = 0;
        loop {
            let szx = szx_of(size);
            let end = (offset + size).min(total);
            let more = end < total;
            let num = (offset / size) as u32;
            if num > BlockOpt::MAX_NUM {
                return Err(TransportError::TooLarge { limit: offset });
            }
            let block1 = BlockOpt { num, more, szx };
            let extra = Extra {
                block1: Some(block1),
                size1: (num == 0).then_some(total as u32),
                ..Default::default()
            };
            let packet = codec::request_packet(req, &req.payload[offset..end], extra);
            let m = round_trip(inner, peer, packet, params).await?;
            match code(&m) {
                (4, 13) => {
                    size = shrink(&m, size)?;
                    tracing::debug!(%peer, size, "4.13 Request Entity Too Large: smaller blocks");
                    continue 'restart;
                }
                (2, _) if more => {
                    // The server may want smaller blocks from now on (RFC 7959 §2.3); our
                    // offset is a multiple of any smaller power of two.
                    if let Some(b) = BlockOpt::get(&m.packet, CoapOption::Block1)? {
                        if b.size() < size {
                            size = b.size();
                        }
                    }
                    offset = end;
                }
                // The last block's answer, or an error that ends the transfer.
                _ => return Ok(m),
            }
        }
    }
}

/// Completes a response that may be the first of several Block2 blocks.
pub(crate) async fn download_rest(
    inner: &Arc<Inner>,
    peer: SocketAddr,
    req: &Request,
    params: &TransmissionParams,
    cfg: &BlockConfig,
    first: Message,
) -> Result<Response, TransportError> {
    let mut resp = codec::response(&first.packet)?;
    // A notification's sequence number is on its first block only.
    let observe = resp.observe;
    let too_large = || TransportError::TooLarge {
        limit: cfg.max_body,
    };
    let Some(mut block) = BlockOpt::get(&first.packet, CoapOption::Block2)? else {
        if resp.payload.len() > cfg.max_body {
            return Err(too_large());
        }
        return Ok(resp);
    };
    if !resp.is_success() || (!block.more && block.num == 0) {
        if resp.payload.len() > cfg.max_body {
            return Err(too_large());
        }
        return Ok(resp);
    }
    // The follow-up requests: the original without payload (RFC 7959 §2.4, §3.3) and
    // without Observe (§3.4).
    let follow = Request {
        payload: Vec::new(),
        ..req.clone()
    };
    let mut body: Vec<u8> = Vec::new();
    let mut etag = resp.etag.clone();
    let mut restarts = 0;
    let mut current = first;
    loop {
        if let Some(total) = codec::size2(&current.packet)? {
            if total as usize > cfg.max_body {
                return Err(too_large());
            }
        }
        if block.offset() != body.len() {
            return Err(TransportError::Malformed(format!(
                "block {} at offset {} while {} bytes have arrived",
                block.num,
                block.offset(),
                body.len()
            )));
        }
        let payload = &current.packet.payload;
        if block.more && payload.len() != block.size() {
            return Err(TransportError::Malformed(format!(
                "block {} has {} bytes instead of {}",
                block.num,
                payload.len(),
                block.size()
            )));
        }
        if body.len() + payload.len() > cfg.max_body {
            return Err(too_large());
        }
        body.extend_from_slice(payload);
        if !block.more {
            resp.payload = body;
            resp.observe = observe;
            return Ok(resp);
        }
        let szx = block.szx.min(cfg.szx());
        let next = BlockOpt {
            num: (body.len() / (16usize << szx)) as u32,
            more: false,
            szx,
        };
        if next.num > BlockOpt::MAX_NUM {
            return Err(too_large());
        }
        let packet = codec::request_packet(
            &follow,
            &[],
            Extra {
                block2: Some(next),
                ..Default::default()
            },
        );
        let m = round_trip(inner, peer, packet, params).await?;
        let r = codec::response(&m.packet)?;
        if !r.is_success() {
            // The server refused a later block: its answer is the answer.
            return Ok(r);
        }
        let Some(b) = BlockOpt::get(&m.packet, CoapOption::Block2)? else {
            return Err(TransportError::Malformed(format!(
                "asked for block {} and got a response without Block2",
                next.num
            )));
        };
        if r.etag != etag {
            // The representation changed between blocks: start over, with the new one.
            restarts += 1;
            if restarts > 2 {
                return Err(TransportError::Malformed(
                    "the resource changed during every block-wise transfer".into(),
                ));
            }
            tracing::debug!(%peer, "ETag changed during a block-wise transfer: starting over");
            etag = r.etag.clone();
            body.clear();
            if b.num != 0 {
                let packet = codec::request_packet(
                    &follow,
                    &[],
                    Extra {
                        block2: Some(BlockOpt {
                            num: 0,
                            more: false,
                            szx,
                        }),
                        ..Default::default()
                    },
                );
                let m0 = round_trip(inner, peer, packet, params).await?;
                let r0 = codec::response(&m0.packet)?;
                if !r0.is_success() {
                    return Ok(r0);
                }
                block = BlockOpt::get(&m0.packet, CoapOption::Block2)?.unwrap_or(BlockOpt {
                    num: 0,
                    more: false,
                    szx,
                });
                etag = r0.etag.clone();
                resp = r0;
                current = m0;
                continue;
            }
        }
        block = b;
        resp = r;
        current = m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(szx_of(16), 0);
        assert_eq!(szx_of(1024), 6);
        assert_eq!(szx_of(256), 4);
        assert_eq!(pow2_floor(0), 0);
        assert_eq!(pow2_floor(1), 1);
        assert_eq!(pow2_floor(700), 512);
        assert_eq!(pow2_floor(1024), 1024);
        assert!(BlockConfig::default().validate().is_ok());
        for bad in [0, 8, 100, 2048] {
            assert!(BlockConfig {
                block_size: bad,
                ..Default::default()
            }
            .validate()
            .is_err());
        }
    }
}
