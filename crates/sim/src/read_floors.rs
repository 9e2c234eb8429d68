//! Range leaders learning their read floors (`ostrakon_ranges::read_floor`): a leader of
//! a data range with none asks the oracle for a timestamp, as the node will, and serves
//! no read at a revision and takes no write with one until it has it.

use ostrakon_raft::{GroupId, NodeId, Role};

use crate::clients::FLOOR_CLIENT_BASE;
use crate::events::Reply;
use crate::node::Request;
use crate::simulation::{trace, Simulation, META};

/// How long a leader waits for the oracle's answer before asking again.
const FLOOR_FETCH_TIMEOUT_US: u64 = 300_000;

impl Simulation {
    /// At every tick of `id`: if it leads `group` (a data range) without a floor and
    /// without a request for one in flight, it asks the oracle.
    pub(crate) fn fetch_read_floor(&mut self, id: NodeId, group: GroupId) {
        // Nobody needs a floor once the clients stopped and no read at a revision is
        // left (the checks at the end then see no oracle bound proposed for it).
        let reads_left = self.scan_clients.iter().any(|c| c.scan.is_some());
        // The node's variant has no floors: reads wait for the fetch in flight instead.
        let whole_range = self.scenario.txn_protocol == crate::scenario::TxnProtocol::WholeRange;
        if group == META || whole_range || (self.clients_stopped && !reads_left) {
            return;
        }
        let replica = self.replica(id, group);
        if replica.raw.role() != Role::Leader {
            return;
        }
        let term = replica.raw.term();
        replica.floor.lead(term);
        if !replica.floor.is_unknown() || replica.floor_fetch.is_some() {
            return;
        }
        let number = self.next_internal_request;
        self.next_internal_request += 1;
        self.replica(id, group).floor_fetch = Some(number);
        self.floor_fetches.insert(number, (id, group, term));
        let target = self.pick_node_as_known_on(id, META);
        trace!(
            self,
            "{id:?} {group:?} asks {target:?} for its read floor in {term:?}"
        );
        let client = FLOOR_CLIENT_BASE + number;
        let request = Request::Timestamps {
            count: 1,
            word: self.ask_word(id),
        };
        self.push_request(client, target, META, request, FLOOR_FETCH_TIMEOUT_US);
    }

    /// The oracle answered a leader's request for its floor.
    pub(crate) fn handle_floor_reply(&mut self, client: u64, reply: Reply) {
        let Some((id, group, term)) = self.end_floor_fetch(client) else {
            return;
        };
        if let Reply::Timestamps(grant, _) = reply {
            let replica = self.replica(id, group);
            replica.floor.learn(term, grant.first);
            trace!(
                self,
                "{id:?} {group:?} learns read floor {} in {term:?}",
                grant.first
            );
        }
    }

    pub(crate) fn floor_fetch_timed_out(&mut self, client: u64) {
        self.end_floor_fetch(client);
    }

    /// The request ended (answered or not): the replica that made it, if it is still the
    /// same life of it and waiting for this request.
    fn end_floor_fetch(&mut self, client: u64) -> Option<(NodeId, GroupId, ostrakon_raft::Term)> {
        let number = client - FLOOR_CLIENT_BASE;
        let (id, group, term) = self.floor_fetches.remove(&number)?;
        let replica = self.replica_if_up(id, group)?;
        if replica.floor_fetch != Some(number) {
            return None;
        }
        replica.floor_fetch = None;
        Some((id, group, term))
    }
}
