//! Inputs to nodes: a client's INPUTS frame goes unchanged to the stream with the most room
//! (split only when one stream cannot take it all), re-dispatched inputs go first, every input is
//! recorded in flight with its payload, and INPUTS_END goes out once nothing is left to send.

use agent_proto::batch::encode_items;
use agent_proto::{BatchView, Frame, FrameKind, Item};

use super::inflight::Slot;
use super::run::{JobRun, Outcome};
use super::ClientInput;

/// Most re-dispatched inputs per INPUTS frame.
const REDISPATCH_BATCH: usize = 1024;

impl JobRun {
    /// Whether some stream can take inputs now.
    pub(super) fn has_credit(&self) -> bool {
        self.streams.iter().any(|s| s.credit() > 0)
    }

    /// The stream with relatively the most room, if any has room.
    fn roomiest(&self) -> Option<Slot> {
        let mut best: Option<Slot> = None;
        for (slot, stream) in self.streams.iter().enumerate() {
            if stream.credit() == 0 {
                continue;
            }
            best = match best {
                Some(b) if !stream.roomier_than(&self.streams[b]) => Some(b),
                _ => Some(slot),
            };
        }
        best
    }

    /// Whether inputs (held or still to come) need a stream and none can take them.
    fn needs_taker(&self) -> bool {
        if self.streams.iter().any(|s| s.takes_inputs()) {
            return false;
        }
        let unplaced =
            self.admission.is_some() && !self.streams.iter().any(|s| s.state.is_active());
        !self.pending.is_empty() || !self.inputs_ended || unplaced
    }

    /// Applies one step of the client's input stream.
    pub(super) fn on_input(&mut self, input: ClientInput) -> Result<(), Outcome> {
        match input {
            ClientInput::Batch { frame, batch } => {
                self.received += batch.len() as u64;
                self.publish_counts();
                self.dispatch(frame, batch)
            }
            ClientInput::End => {
                self.inputs_ended = true;
                self.close_node_inputs_if_done();
                Ok(())
            }
            ClientInput::Invalid(reason) => Err(Outcome::failed(format!(
                "the client's input stream is invalid: {reason}"
            ))),
            ClientInput::Disconnected(reason) if !self.spec.detach => Err(Outcome::cancelled(
                format!("the client disconnected: {reason}"),
            )),
            ClientInput::Disconnected(_) => Ok(()),
            ClientInput::Refused(reason) => Err(Outcome::failed(reason)),
        }
    }

    /// Sends a client batch to the roomiest stream, splitting it only if it does not fit there
    /// and other streams have room.
    fn dispatch(&mut self, frame: Frame, batch: BatchView) -> Result<(), Outcome> {
        if batch.is_empty() {
            return Ok(());
        }
        let Some(best) = self.roomiest() else {
            // Only reached with inputs that came with the submission before any credit check,
            // or after every stream was lost: hold them for the next stream.
            self.pending.extend(batch.items());
            return self.flush_pending();
        };
        let takers = self.streams.iter().filter(|s| s.credit() > 0).count();
        if self.streams[best].credit() >= batch.len() || takers == 1 {
            self.record(best, &batch)?;
            self.streams[best].send(frame);
            return Ok(());
        }
        let mut items: Vec<Item> = batch.items().collect();
        while !items.is_empty() {
            let Some(slot) = self.roomiest() else {
                // Every stream is full: the rest overshoots onto the first choice.
                let rest = std::mem::take(&mut items);
                self.send_items(best, rest)?;
                break;
            };
            let take = self.streams[slot].credit().min(items.len());
            let rest = items.split_off(take);
            let part = std::mem::replace(&mut items, rest);
            self.send_items(slot, part)?;
        }
        Ok(())
    }

    /// Records the batch's inputs as in flight on `slot` (their payloads stay in its body).
    fn record(&mut self, slot: Slot, batch: &BatchView) -> Result<(), Outcome> {
        let frame = self.inflight.hold_frame(batch.body().clone());
        let mut bytes = 0;
        for (index, offset, len) in batch.iter() {
            bytes += len;
            if let Err(duplicate) = self.inflight.insert(index, slot, frame, offset, len) {
                self.inflight.release_frame(frame);
                return Err(Outcome::failed(format!(
                    "input index {} was sent twice while the first was still running; every input needs its own index",
                    duplicate.0
                )));
            }
        }
        self.streams[slot].hold(batch.len(), bytes);
        Ok(())
    }

    /// Sends `items` to `slot` as a new INPUTS frame.
    fn send_items(&mut self, slot: Slot, items: Vec<Item>) -> Result<(), Outcome> {
        if items.is_empty() {
            return Ok(());
        }
        let frame = Frame::new(FrameKind::Inputs, encode_items(&items));
        let batch = BatchView::from_frame(&frame).map_err(|err| {
            Outcome::failed(format!(
                "internal error: a re-encoded batch is invalid: {err}"
            ))
        })?;
        self.record(slot, &batch)?;
        self.streams[slot].send(frame);
        Ok(())
    }

    /// Sends held (re-dispatched) inputs to streams with room, opening a stream on a live node
    /// when none can take inputs; then closes node inputs if nothing is left to send.
    pub(super) fn flush_pending(&mut self) -> Result<(), Outcome> {
        // Each pass either empties the queue, fills every stream, or opens one stream; a
        // stream opened here has room, so two passes are enough.
        for _ in 0..2 {
            while !self.pending.is_empty() {
                let Some(slot) = self.roomiest() else { break };
                let take = self.streams[slot]
                    .credit()
                    .min(REDISPATCH_BATCH)
                    .min(self.pending.len());
                let items: Vec<Item> = self.pending.drain(..take).collect();
                self.send_items(slot, items)?;
            }
            if !self.needs_taker() || !self.ensure_stream() {
                break;
            }
        }
        if !self.needs_taker() {
            self.waiting_since = None;
        }
        self.close_node_inputs_if_done();
        Ok(())
    }

    /// Once the client sent INPUTS_END and nothing is held, tells each stream that holds no
    /// input there is no more, unless queued work may still move to it (see `rebalance`).
    pub(super) fn close_node_inputs_if_done(&mut self) {
        if !self.inputs_ended || !self.pending.is_empty() {
            return;
        }
        let keep_open = self.tail_unsettled();
        for stream in &mut self.streams {
            if stream.items == 0 && !(keep_open && stream.takes_inputs()) {
                stream.close_inputs();
            }
        }
    }
}
