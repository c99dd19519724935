//! Ledger recovery's decisions, apart from its I/O (which is the ledger client's): how many
//! bookies must be fenced, where the scan for unconfirmed entries starts, and what the
//! replies about one entry decide. Pure, so the arithmetic that keeps acknowledged entries
//! from being cut off is checked exhaustively.

/// Bookies of the last fragment that must acknowledge the fence: more than E − Qa, so that
/// no write set can gather Qa acks from the bookies still unfenced (at most Qa − 1).
pub fn fencing_quorum(ensemble: usize, ack_quorum: usize) -> usize {
    ensemble.saturating_sub(ack_quorum) + 1
}

/// The first entry recovery must look at: every entry up to the largest last-add-confirmed
/// any fenced bookie reported was acknowledged, so the scan starts after it.
pub fn first_unconfirmed(lacs: impl IntoIterator<Item = i64>) -> u64 {
    (lacs.into_iter().fold(-1i64, i64::max) + 1) as u64
}

/// What the replies about one entry decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A replica has it: it may have been acknowledged, so it is written back to its whole
    /// write set and the scan goes on.
    Recover,
    /// Absent from more than Qw − Qa replicas: it can never have reached Qa, so the ledger
    /// ends just before it.
    End,
    /// Neither: too many replicas could not be asked to tell. Recovery must fail, not guess.
    Stuck,
}

/// `found`: some replica returned the entry; `missing`: replicas that answered they do not
/// have it (the others did not answer).
pub fn verdict(found: bool, missing: usize, write_quorum: usize, ack_quorum: usize) -> Verdict {
    if found {
        Verdict::Recover
    } else if missing > write_quorum.saturating_sub(ack_quorum) {
        Verdict::End
    } else {
        Verdict::Stuck
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fencing_quorum_leaves_too_few_unfenced_for_an_ack() {
        assert_eq!(fencing_quorum(3, 2), 2);
        assert_eq!(fencing_quorum(2, 2), 1);
        assert_eq!(fencing_quorum(5, 3), 3);
        assert_eq!(fencing_quorum(1, 1), 1);
        for e in 1..=8 {
            for qa in 1..=e {
                let unfenced = e - fencing_quorum(e, qa);
                assert!(
                    unfenced < qa,
                    "E={e} Qa={qa}: {unfenced} unfenced could ack"
                );
            }
        }
    }

    #[test]
    fn the_scan_starts_after_the_largest_confirmed_entry() {
        assert_eq!(first_unconfirmed([3, 7, -1]), 8);
        assert_eq!(first_unconfirmed([-1, -1]), 0);
        assert_eq!(first_unconfirmed([]), 0);
    }

    /// Every way the replicas of an acknowledged entry can answer: recovery never ends the
    /// ledger before it.
    #[test]
    fn an_acknowledged_entry_is_never_cut_off() {
        for qw in 1usize..=6 {
            for qa in 1..=qw {
                // held by `have` replicas (acknowledged: at least qa), `down` do not answer
                for have in qa..=qw {
                    for down in 0..=qw {
                        let answering_holders = have.saturating_sub(down);
                        let missing = (qw - have).min(qw - down);
                        let v = verdict(answering_holders > 0, missing, qw, qa);
                        assert_ne!(
                            v,
                            Verdict::End,
                            "Qw={qw} Qa={qa}: held by {have}, {down} down"
                        );
                    }
                }
                // and an entry absent everywhere ends the ledger once enough say so
                assert_eq!(verdict(false, qw, qw, qa), Verdict::End);
                assert_eq!(verdict(false, qw - qa, qw, qa), Verdict::Stuck);
            }
        }
    }
}
