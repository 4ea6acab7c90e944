//! The per-device poller and writer: one [`ModbusAdapter`] per configured device, sharing
//! its connection's [`Bus`] with the other units behind it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fieldgate_api::{
    Adapter, AdapterContext, AdapterError, AdapterRequest, DeviceId, EventSink, Reachability,
    ReadOutcome, Reading, Value,
};
use futures::future::BoxFuture;
use futures::FutureExt;

use crate::bus::{Bus, BusAnswer, BusError, BusOp, Exception};
use crate::codec::{Point, WriteOp};
use crate::plan::{plan, ReadPlan, ReadRequest};

/// Longest back-off of a unit that does not answer.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// When the cycle after one that was due at `scheduled` starts. Fixed rate, one cycle per
/// `poll` from the start of the last, so "every second" means 1,000 values a second for
/// 1,000 fields, not a little less; a cycle that overran starts the next one at once
/// instead of a burst of the missed ones.
fn next_cycle(scheduled: Instant, poll: Duration, now: Instant) -> Instant {
    (scheduled + poll).max(now)
}

/// One Modbus device (one unit id on one connection).
pub struct ModbusAdapter {
    device: DeviceId,
    unit: u8,
    /// (field name, decoder) in field order. The names are those readings carry: shared
    /// with the configuration, so neither a poll nor the adapter copies them.
    points: Arc<[(Arc<str>, Point)]>,
    plan: ReadPlan,
    poll: Duration,
    read_back: bool,
    write_multiple: bool,
    bus: Bus,
}

impl std::fmt::Debug for ModbusAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModbusAdapter")
            .field("device", &self.device)
            .field("unit", &self.unit)
            .field("connection", &self.bus.name())
            .finish()
    }
}

/// The device-level settings the adapter needs, resolved from its configuration.
#[derive(Debug, Clone)]
pub struct DeviceSettings {
    /// Unit id.
    pub unit: u8,
    /// Poll interval.
    pub poll: Duration,
    /// Read written values back to confirm them.
    pub read_back: bool,
    /// Always use FC15/FC16.
    pub write_multiple: bool,
    /// Planner limits.
    pub limits: crate::plan::PlanLimits,
}

impl ModbusAdapter {
    /// Plans the device's reads; fails when the fields cannot be planned.
    pub fn new(
        device: DeviceId,
        settings: DeviceSettings,
        points: impl Into<Arc<[(Arc<str>, Point)]>>,
        bus: Bus,
    ) -> Result<Self, String> {
        let points: Arc<[(Arc<str>, Point)]> = points.into();
        let spans: Vec<_> = points.iter().map(|(_, p)| p.span()).collect();
        let plan = plan(&spans, &settings.limits).map_err(|e| e.to_string())?;
        Ok(ModbusAdapter {
            device,
            unit: settings.unit,
            points,
            plan,
            poll: settings.poll,
            read_back: settings.read_back,
            write_multiple: settings.write_multiple,
            bus,
        })
    }

    /// The read plan of one poll cycle.
    pub fn plan(&self) -> &ReadPlan {
        &self.plan
    }

    /// Runs `requests`, decoding every field they carry (or only those `only` marks, by
    /// point index).
    /// Returns the readings, the failed fields, and the first "no answer" error if every
    /// request met one (the unit is then considered unreachable).
    async fn read(
        &self,
        requests: &[&ReadRequest],
        only: Option<&[bool]>,
    ) -> (Vec<Reading>, Vec<(String, AdapterError)>, Option<BusError>) {
        let mut readings = Vec::new();
        let mut failures = Vec::new();
        let mut silent: Option<BusError> = None;
        let mut answered = false;
        for req in requests {
            let op = BusOp::Read {
                kind: req.kind,
                address: req.address,
                count: req.count,
            };
            let result = self.bus.call(self.unit, op).await;
            let now = SystemTime::now();
            let wanted = req
                .slots
                .iter()
                .filter(|s| only.is_none_or(|o| o[s.field as usize]));
            match result {
                Ok(answer) => {
                    answered = true;
                    for slot in wanted {
                        let (name, point) = &self.points[slot.field as usize];
                        let value = match &answer {
                            BusAnswer::Words(w) => req
                                .slice(slot, w)
                                .ok_or_else(|| short(w.len(), req.count))
                                .and_then(|regs| {
                                    point.decode_registers(regs).map_err(|e| e.to_string())
                                }),
                            BusAnswer::Bits(b) => req
                                .slice(slot, b)
                                .ok_or_else(|| short(b.len(), req.count))
                                .and_then(|bits| {
                                    point.decode_bits(bits).map_err(|e| e.to_string())
                                }),
                            BusAnswer::Done => Err("no data in the answer".to_owned()),
                        };
                        match value {
                            Ok(v) => readings.push(Reading::new(name.clone(), v, now)),
                            Err(e) => failures.push((name.to_string(), AdapterError::Refused(e))),
                        }
                    }
                }
                Err(e) => {
                    if e.is_silence() && silent.is_none() {
                        silent = Some(e.clone());
                    } else if !e.is_silence() {
                        answered = true;
                    }
                    for slot in wanted {
                        let name = &self.points[slot.field as usize].0;
                        failures.push((name.to_string(), e.clone().into_adapter_error()));
                    }
                }
            }
        }
        (readings, failures, if answered { None } else { silent })
    }

    /// Writes `params` in order; stops at the first failure (the earlier ones stay
    /// applied: a field bus has no transactions).
    async fn write(&self, params: Vec<(String, Value)>) -> Result<(), AdapterError> {
        let mut ops = Vec::with_capacity(params.len());
        // Encode everything first: a value that cannot be encoded writes nothing.
        for (name, value) in &params {
            let (_, point) = self
                .points
                .iter()
                .find(|(n, _)| **n == **name)
                .ok_or_else(|| AdapterError::UnknownField(name.clone()))?;
            if !point.writable() {
                return Err(AdapterError::NotWritable(name.clone()));
            }
            let op = point
                .encode(value)
                .map_err(|e| e.into_adapter_error(name))?;
            ops.push((name, point, op));
        }
        for (name, point, op) in ops {
            self.write_one(&op)
                .await
                .map_err(|e| e.into_adapter_error())?;
            if self.read_back {
                self.confirm(name, point, &op).await?;
            }
        }
        Ok(())
    }

    async fn write_one(&self, op: &WriteOp) -> Result<(), BusError> {
        let bus_op = match op {
            WriteOp::Coil { address, value } if self.write_multiple => BusOp::WriteCoils {
                address: *address,
                values: vec![*value],
            },
            WriteOp::Coil { address, value } => BusOp::WriteCoil {
                address: *address,
                value: *value,
            },
            WriteOp::Registers { address, values } if values.len() == 1 && !self.write_multiple => {
                BusOp::WriteRegister {
                    address: *address,
                    value: values[0],
                }
            }
            WriteOp::Registers { address, values } => BusOp::WriteRegisters {
                address: *address,
                values: values.clone(),
            },
            WriteOp::RegisterBit { address, .. } => {
                let (and, or) = op.masks().unwrap_or((0xFFFF, 0));
                let masked = BusOp::MaskWrite {
                    address: *address,
                    and,
                    or,
                };
                match self.bus.call(self.unit, masked).await {
                    Err(BusError::Exception {
                        code: Exception::IllegalFunction,
                        ..
                    }) => {
                        // No FC22 on this device: read, modify, write (not atomic).
                        let read = BusOp::Read {
                            kind: crate::types::RegisterKind::Holding,
                            address: *address,
                            count: 1,
                        };
                        let current = match self.bus.call(self.unit, read).await? {
                            BusAnswer::Words(w) if w.len() == 1 => w[0],
                            _ => {
                                return Err(BusError::Protocol {
                                    unit: self.unit,
                                    text: "short answer to a one-register read".into(),
                                })
                            }
                        };
                        BusOp::WriteRegister {
                            address: *address,
                            value: op.apply_to(current).unwrap_or(current),
                        }
                    }
                    other => return other.map(|_| ()),
                }
            }
        };
        self.bus.call(self.unit, bus_op).await.map(|_| ())
    }

    async fn confirm(&self, name: &str, point: &Point, op: &WriteOp) -> Result<(), AdapterError> {
        let span = point.span();
        let read = BusOp::Read {
            kind: span.kind,
            address: span.address,
            count: span.count,
        };
        let answer = self
            .bus
            .call(self.unit, read)
            .await
            .map_err(BusError::into_adapter_error)?;
        let ok = match &answer {
            BusAnswer::Words(w) => op.confirmed_by_registers(w),
            BusAnswer::Bits(b) => op.confirmed_by_bits(b),
            BusAnswer::Done => false,
        };
        if ok {
            Ok(())
        } else {
            Err(AdapterError::Refused(format!(
                "{name}: the value read back differs from the value written"
            )))
        }
    }

    async fn poll_cycle(&self, events: &EventSink) -> Result<(), BusError> {
        let requests: Vec<&ReadRequest> = self.plan.requests().iter().collect();
        let (readings, failures, silent) = self.read(&requests, None).await;
        tracing::debug!(device = %self.device, requests = requests.len(), values = readings.len(),
            failed = failures.len(), "poll cycle");
        events.readings(&self.device, readings);
        for (name, e) in failures.iter().take(3) {
            if silent.is_none() {
                tracing::warn!(device = %self.device, field = %name, error = %e, "field not read");
            }
        }
        match silent {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn serve(&self, req: AdapterRequest, dead: Option<&BusError>) {
        match req {
            AdapterRequest::Read { fields, reply, .. } => {
                let mut outcome = ReadOutcome::default();
                // Which points are wanted, by index: a readout may name thousands of
                // fields of a register map of thousands, so names are looked up in a
                // map made for this request, not searched one by one.
                let mut wanted = vec![fields.is_none(); self.points.len()];
                if let Some(names) = fields {
                    let index: HashMap<&str, usize> = self
                        .points
                        .iter()
                        .enumerate()
                        .map(|(i, (n, _))| (&**n, i))
                        .collect();
                    for name in names {
                        match index.get(name.as_str()) {
                            Some(&i) => wanted[i] = true,
                            None => outcome
                                .failures
                                .push((name.clone(), AdapterError::UnknownField(name))),
                        }
                    }
                }
                if let Some(e) = dead {
                    // The unit is backed off: answer at once rather than hold the bus.
                    for (i, _) in wanted.iter().enumerate().filter(|(_, w)| **w) {
                        let err = e.clone().into_adapter_error();
                        outcome.failures.push((self.points[i].0.to_string(), err));
                    }
                } else {
                    let requests: Vec<&ReadRequest> = self
                        .plan
                        .requests()
                        .iter()
                        .filter(|r| r.slots.iter().any(|s| wanted[s.field as usize]))
                        .collect();
                    let (readings, failures, _) = self.read(&requests, Some(&wanted)).await;
                    outcome.readings = readings;
                    outcome.failures.extend(failures);
                }
                let _ = reply.send(outcome);
            }
            AdapterRequest::Write { params, reply, .. } => {
                let result = match dead {
                    Some(e) => Err(e.clone().into_adapter_error()),
                    None => self.write(params).await,
                };
                let _ = reply.send(result);
            }
            // A Modbus device discovers nothing.
            AdapterRequest::Adopt { .. } => {}
        }
    }
}

fn short(got: usize, asked: u16) -> String {
    format!("short answer: {got} values for a request of {asked}")
}

impl Adapter for ModbusAdapter {
    fn kind(&self) -> &'static str {
        "modbus"
    }

    fn devices(&self) -> Vec<DeviceId> {
        vec![self.device.clone()]
    }

    fn run(self: Box<Self>, mut ctx: AdapterContext) -> BoxFuture<'static, ()> {
        async move {
            let naive = self.plan.naive_requests();
            tracing::info!(device = %self.device, connection = %self.bus.name(), unit = self.unit,
                requests_per_cycle = self.plan.requests_per_cycle(), one_per_field = naive,
                poll_ms = self.poll.as_millis() as u64, "modbus read plan");
            let mut state: Option<Reachability> = None;
            let mut failures: u32 = 0;
            let mut next_poll = Instant::now();
            let mut dead_reason: Option<BusError> = None;
            loop {
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => break,
                    _ = tokio::time::sleep_until(next_poll.into()) => {
                        let result = self.poll_cycle(&ctx.events).await;
                        if result.is_err() && self.bus.is_closed() && !ctx.shutdown.is_cancelled() {
                            // The connection task is gone (it failed): end, so that the
                            // gateway restarts this device, and with it the connection.
                            tracing::error!(device = %self.device, connection = %self.bus.name(),
                                "modbus connection task ended; stopping the device's adapter");
                            break;
                        }
                        let now = Instant::now();
                        let new_state = match &result {
                            Ok(()) => {
                                failures = 0;
                                dead_reason = None;
                                next_poll = next_cycle(next_poll, self.poll, now);
                                Reachability::Reachable
                            }
                            Err(e) => {
                                // Back the silent unit off so it holds the shared bus up
                                // at most once per back-off period.
                                let wait = self.poll.saturating_mul(1u32 << failures.min(6)).min(MAX_BACKOFF).max(self.poll);
                                failures = failures.saturating_add(1);
                                next_poll = now + wait;
                                dead_reason = Some(e.clone());
                                Reachability::Unreachable(e.reason())
                            }
                        };
                        if state.as_ref() != Some(&new_state) {
                            state = Some(new_state.clone());
                            if !ctx.events.reachability(&self.device, new_state).await {
                                break;
                            }
                        }
                    }
                    req = ctx.requests.recv() => match req {
                        None => break,
                        Some(req) => self.serve(req, dead_reason.as_ref()).await,
                    },
                }
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_keep_a_fixed_rate_and_never_burst() {
        let t0 = Instant::now();
        let poll = Duration::from_secs(1);
        // a cycle that took 300 ms does not push the next one back
        let done = t0 + Duration::from_millis(300);
        assert_eq!(next_cycle(t0, poll, done), t0 + poll);
        // one that overran by 1.5 periods is followed at once, not by the missed ones
        let late = t0 + Duration::from_millis(2500);
        assert_eq!(next_cycle(t0, poll, late), late);
        assert_eq!(
            next_cycle(late, poll, late + Duration::from_millis(10)),
            late + poll
        );
    }
}
