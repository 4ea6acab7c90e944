//! Simulated devices: deterministic readings (counters, sine waves, toggles, constants,
//! writable setpoints) configured in TOML, so the gateway can be tried, demonstrated,
//! tested and benchmarked without hardware.
//!
//! Every value is a pure function of the wall-clock time at which it is read, so a test
//! can recompute what a device must have reported from the reading's timestamp.

mod config;
mod kind;

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fieldgate_api::{
    Adapter, AdapterContext, AdapterError, AdapterRequest, DeviceId, FieldSpec, FieldType,
    Reachability, ReadOutcome, Reading, Value,
};
use futures::future::BoxFuture;
use futures::FutureExt;

pub use config::{SimConst, SimDevice, SimField};
pub use kind::{SimKind, SimSetup};

/// One simulated device.
#[derive(Debug)]
pub struct SimAdapter {
    device: DeviceId,
    config: SimDevice,
    fields: Vec<(FieldSpec, SimField)>,
}

impl SimAdapter {
    /// Builds a simulated device; fields without a `sim` table are constants at their
    /// type's zero (a writable one is then a plain setpoint). Fails with a message when a
    /// generator does not fit its field's type.
    pub fn new(
        device: DeviceId,
        config: SimDevice,
        fields: Vec<(FieldSpec, Option<SimField>)>,
    ) -> Result<Self, String> {
        let fields = fields
            .into_iter()
            .map(|(spec, sim)| {
                let sim = sim.unwrap_or_default();
                sim.check(&spec)
                    .map_err(|e| format!("field {:?}: {e}", spec.name))?;
                Ok((spec, sim))
            })
            .collect::<Result<Vec<_>, String>>()?;
        if config.fault_panic_after_reads == Some(0) {
            return Err("fault_panic_after_reads counts from 1".into());
        }
        if config.outage_every.is_some() != config.outage_for.is_some() {
            return Err("outage_every and outage_for go together".into());
        }
        if let (Some(every), Some(dur)) = (config.outage_every, config.outage_for) {
            if dur.0 >= every.0 || dur.0.is_zero() {
                return Err("outage_for must be shorter than outage_every and not zero".into());
            }
        }
        Ok(SimAdapter {
            device,
            config,
            fields,
        })
    }

    /// The reachability the device has at `now`.
    fn reachability_at(&self, now: SystemTime) -> Reachability {
        if let Some(reason) = &self.config.unreachable {
            return Reachability::Unreachable(reason.as_str().into());
        }
        if let (Some(every), Some(dur)) = (self.config.outage_every, self.config.outage_for) {
            let t = since_epoch(now);
            if t.as_nanos() % every.0.as_nanos() < dur.0.as_nanos() {
                return Reachability::Unreachable("simulated outage".into());
            }
        }
        Reachability::Reachable
    }

    /// How long until the outage schedule changes the device's reachability.
    fn next_flip(&self, now: SystemTime) -> Option<Duration> {
        let (every, dur) = (self.config.outage_every?, self.config.outage_for?);
        let phase = since_epoch(now).as_nanos() % every.0.as_nanos();
        let until = if phase < dur.0.as_nanos() {
            dur.0.as_nanos() - phase
        } else {
            every.0.as_nanos() - phase
        };
        Some(Duration::from_nanos(until as u64).max(Duration::from_millis(1)))
    }

    fn read(&self, fields: Option<Vec<String>>, overrides: &HashMap<String, Value>) -> ReadOutcome {
        let now = SystemTime::now();
        let reach = self.reachability_at(now);
        let mut out = ReadOutcome::default();
        let wanted: Vec<&(FieldSpec, SimField)> = match &fields {
            None => self.fields.iter().collect(),
            Some(names) => {
                let mut v = Vec::new();
                for n in names {
                    match self.fields.iter().find(|(s, _)| *s.name == **n) {
                        Some(f) => v.push(f),
                        None => out
                            .failures
                            .push((n.clone(), AdapterError::UnknownField(n.clone()))),
                    }
                }
                v
            }
        };
        for (spec, sim) in wanted {
            if let Reachability::Unreachable(why) = &reach {
                out.failures
                    .push((spec.name.to_string(), AdapterError::LinkDown(why.clone())));
                continue;
            }
            let value = overrides
                .get(&*spec.name)
                .cloned()
                .unwrap_or_else(|| sim.value_at(spec, now));
            out.readings
                .push(Reading::new(spec.name.clone(), value, now));
        }
        out
    }

    fn write(
        &self,
        params: Vec<(String, Value)>,
        overrides: &mut HashMap<String, Value>,
    ) -> Result<(), AdapterError> {
        if let Reachability::Unreachable(why) = self.reachability_at(SystemTime::now()) {
            return Err(AdapterError::LinkDown(why));
        }
        // Check all before applying any: a rejected parameter leaves the device unchanged.
        for (name, value) in &params {
            let (spec, _) = self
                .fields
                .iter()
                .find(|(s, _)| *s.name == **name)
                .ok_or_else(|| AdapterError::UnknownField(name.clone()))?;
            spec.validate_write(value)?;
        }
        for (name, value) in params {
            let spec = &self
                .fields
                .iter()
                .find(|(s, _)| *s.name == *name)
                .unwrap()
                .0;
            overrides.insert(name, coerce(spec.kind, value));
        }
        Ok(())
    }
}

/// Stores a written value in the field's own type (an int written to a double field
/// reads back as a double).
fn coerce(kind: FieldType, value: Value) -> Value {
    match (kind, value) {
        (FieldType::Double, Value::Int(v)) => Value::Double(f64::from(v)),
        (FieldType::Double, Value::Long(v)) => Value::Double(v as f64),
        (FieldType::Long, Value::Int(v)) => Value::Long(i64::from(v)),
        (FieldType::Enum, Value::String(v)) => Value::Enum(v),
        (_, v) => v,
    }
}

fn since_epoch(t: SystemTime) -> Duration {
    t.duration_since(UNIX_EPOCH).unwrap_or_default()
}

impl Adapter for SimAdapter {
    fn kind(&self) -> &'static str {
        "sim"
    }

    fn devices(&self) -> Vec<DeviceId> {
        vec![self.device.clone()]
    }

    fn run(self: Box<Self>, mut ctx: AdapterContext) -> BoxFuture<'static, ()> {
        async move {
            let mut overrides: HashMap<String, Value> = HashMap::new();
            let mut reads: u32 = 0;
            let mut state = self.reachability_at(SystemTime::now());
            if !ctx.events.reachability(&self.device, state.clone()).await {
                return;
            }
            loop {
                let flip = self.next_flip(SystemTime::now());
                let sleep = tokio::time::sleep(flip.unwrap_or(Duration::from_secs(3600)));
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => break,
                    _ = sleep, if flip.is_some() => {
                        let now_state = self.reachability_at(SystemTime::now());
                        if now_state != state {
                            state = now_state;
                            if !ctx.events.reachability(&self.device, state.clone()).await {
                                break;
                            }
                        }
                    }
                    req = ctx.requests.recv() => match req {
                        None => break,
                        Some(AdapterRequest::Read { fields, reply, .. }) => {
                            reads = reads.saturating_add(1);
                            if self.config.fault_panic_after_reads == Some(reads) {
                                panic!("simulated fault: read {reads} (fault_panic_after_reads)");
                            }
                            let _ = reply.send(self.read(fields, &overrides));
                        }
                        Some(AdapterRequest::Write { params, reply, .. }) => {
                            let _ = reply.send(self.write(params, &mut overrides));
                        }
                        // A simulated device discovers nothing.
                        Some(AdapterRequest::Adopt { .. }) => {}
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
    use fieldgate_api::{EventSink, HumanDuration};
    use tokio::sync::{mpsc, oneshot};
    use tokio_util::sync::CancellationToken;

    fn spec(name: &str, kind: FieldType, writable: bool) -> FieldSpec {
        FieldSpec {
            writable,
            ..FieldSpec::new(name, kind)
        }
    }

    #[test]
    fn generators_are_functions_of_time() {
        let t = UNIX_EPOCH + Duration::from_secs(1_000);
        let counter = SimField::Counter {
            start: 5,
            step: 2,
            every: HumanDuration::from_secs(10),
        };
        assert_eq!(
            counter.value_at(&spec("c", FieldType::Long, false), t),
            Value::Long(205)
        );
        let toggle = SimField::Toggle {
            every: HumanDuration::from_secs(3),
        };
        // 1000 / 3 = 333, odd: on.
        assert_eq!(
            toggle.value_at(&spec("t", FieldType::Bool, false), t),
            Value::Bool(true)
        );
        let sine = SimField::Sine {
            period: HumanDuration::from_secs(4_000),
            amplitude: 2.0,
            offset: 10.0,
        };
        // A quarter period: the crest.
        match sine.value_at(&spec("s", FieldType::Double, false), t) {
            Value::Double(v) => assert!((v - 12.0).abs() < 1e-9),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn constants_must_fit_the_field_type() {
        let c = SimField::Constant {
            value: SimConst::Str("hot".into()),
        };
        let err = SimAdapter::new(
            "d".into(),
            SimDevice::default(),
            vec![(spec("x", FieldType::Double, false), Some(c))],
        )
        .unwrap_err();
        assert!(err.contains("field \"x\""), "{err}");
    }

    #[tokio::test]
    async fn writable_setpoint_reads_back_and_unreachable_device_refuses() {
        let sim = SimAdapter::new(
            "boiler".into(),
            SimDevice::default(),
            vec![
                (
                    FieldSpec {
                        max: Some(90.0),
                        ..spec("setpoint", FieldType::Double, true)
                    },
                    None,
                ),
                (spec("temp", FieldType::Double, false), None),
            ],
        )
        .unwrap();
        let (ev_tx, mut ev_rx) = mpsc::channel(8);
        let (req_tx, req_rx) = mpsc::channel(8);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(Box::new(sim).run(AdapterContext {
            events: EventSink::new(ev_tx, Default::default()),
            requests: req_rx,
            shutdown: shutdown.clone(),
        }));
        let ev = ev_rx.recv().await.unwrap();
        assert_eq!(
            ev.kind,
            fieldgate_api::EventKind::Reachability(Reachability::Reachable)
        );

        let (reply, rx) = oneshot::channel();
        let params = vec![("setpoint".to_string(), Value::Int(70))];
        req_tx
            .send(AdapterRequest::Write {
                device: "boiler".into(),
                params,
                reply,
            })
            .await
            .unwrap();
        assert_eq!(rx.await.unwrap(), Ok(()));

        let (reply, rx) = oneshot::channel();
        let params = vec![
            ("setpoint".to_string(), Value::Int(10)),
            ("setpoint".to_string(), Value::Int(95)),
        ];
        req_tx
            .send(AdapterRequest::Write {
                device: "boiler".into(),
                params,
                reply,
            })
            .await
            .unwrap();
        assert!(matches!(
            rx.await.unwrap(),
            Err(AdapterError::InvalidValue { .. })
        ));

        let (reply, rx) = oneshot::channel();
        req_tx
            .send(AdapterRequest::Read {
                device: "boiler".into(),
                fields: Some(vec!["setpoint".into(), "nope".into()]),
                reply,
            })
            .await
            .unwrap();
        let out = rx.await.unwrap();
        // The rejected batch left the earlier value in place.
        assert_eq!(out.readings[0].value, Value::Double(70.0));
        assert_eq!(
            out.failures,
            vec![("nope".into(), AdapterError::UnknownField("nope".into()))]
        );
        shutdown.cancel();
        task.await.unwrap();
    }

    #[test]
    fn outage_schedule_flips_reachability() {
        let sim = SimAdapter::new(
            "d".into(),
            SimDevice {
                outage_every: Some(HumanDuration::from_secs(10)),
                outage_for: Some(HumanDuration::from_secs(2)),
                ..Default::default()
            },
            vec![],
        )
        .unwrap();
        let t = UNIX_EPOCH + Duration::from_secs(1_001);
        assert!(matches!(
            sim.reachability_at(t),
            Reachability::Unreachable(_)
        ));
        assert_eq!(sim.next_flip(t), Some(Duration::from_secs(1)));
        let t = UNIX_EPOCH + Duration::from_secs(1_005);
        assert_eq!(sim.reachability_at(t), Reachability::Reachable);
        assert_eq!(sim.next_flip(t), Some(Duration::from_secs(5)));
    }
}
