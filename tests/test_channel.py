"""
Tests for L{portmapper.protocol.channel}: a channel's named states and the
one table of transitions between them.  The table is written out here in
full, so that a transition added or lost in the code fails a test.
"""

from twisted.trial.unittest import SynchronousTestCase

from portmapper.protocol.channel import (
    CONNECTING_STATES, GOT_FIN_STATES, OPENING_STATES, SENT_FIN_STATES, TRANSITIONS, Channel,
    IllegalTransition, Input, State, advance,
)
from portmapper.protocol.windows import LinkEstimate

S, I = State, Input

# Every transition a channel may make, except RESET (allowed from every state but CLOSED).
ALLOWED = {
    (S.OPENING, I.OPENED): S.OPEN,
    (S.OPENING, I.LOCAL_EOF): S.OPENING_SENT_FIN,
    (S.OPENING_SENT_FIN, I.OPENED): S.SENT_FIN,
    (S.CONNECTING, I.OPENED): S.OPEN,
    (S.CONNECTING, I.REMOTE_FIN): S.CONNECTING_GOT_FIN,
    (S.CONNECTING_GOT_FIN, I.OPENED): S.GOT_FIN,
    (S.OPEN, I.LOCAL_EOF): S.SENT_FIN,
    (S.OPEN, I.REMOTE_FIN): S.GOT_FIN,
    (S.SENT_FIN, I.REMOTE_FIN): S.CLOSED,
    (S.GOT_FIN, I.LOCAL_EOF): S.CLOSED,
}
ALLOWED.update({(state, I.RESET): S.CLOSED for state in State if state is not S.CLOSED})


class TransitionTests(SynchronousTestCase):
    """advance() follows the table, and refuses everything else."""

    def test_everyAllowedTransition(self):
        """Each allowed (state, input) leads to the state the table names."""
        for (state, event), after in ALLOWED.items():
            self.assertIs(advance(state, event), after, (state, event))

    def test_everyOtherTransitionRaises(self):
        """Each (state, input) not in the table raises IllegalTransition naming both."""
        refused = [(state, event) for state in State for event in Input
                   if (state, event) not in ALLOWED]
        self.assertEqual(len(refused), len(State) * len(Input) - len(ALLOWED))
        for state, event in refused:
            with self.assertRaises(IllegalTransition) as caught:
                advance(state, event)
            self.assertEqual(str(caught.exception), f"{event.value} in state {state.value}")

    def test_resetFromEveryStateButClosed(self):
        """RESET closes a channel from any state; a closed channel cannot be reset again."""
        for state in State:
            if state is S.CLOSED:
                self.assertRaises(IllegalTransition, advance, state, I.RESET)
            else:
                self.assertIs(advance(state, I.RESET), S.CLOSED, state)

    def test_tableHoldsNothingElse(self):
        """The code's table is exactly the one written out here."""
        self.assertEqual(TRANSITIONS, ALLOWED)

    def test_closedIsFinal(self):
        """No input leads out of CLOSED."""
        for event in Input:
            self.assertRaises(IllegalTransition, advance, S.CLOSED, event)


class StateGroupTests(SynchronousTestCase):
    """The groups of states the link core checks DATA, FIN and OPEN_OK against."""

    def test_groups(self):
        """Opening, connecting, sent-FIN and got-FIN states are the ones their names say."""
        self.assertEqual(OPENING_STATES, {S.OPENING, S.OPENING_SENT_FIN})
        self.assertEqual(CONNECTING_STATES, {S.CONNECTING, S.CONNECTING_GOT_FIN})
        self.assertEqual(SENT_FIN_STATES, {S.OPENING_SENT_FIN, S.SENT_FIN, S.CLOSED})
        self.assertEqual(GOT_FIN_STATES, {S.CONNECTING_GOT_FIN, S.GOT_FIN, S.CLOSED})

    def test_groupsFollowTheTable(self):
        """LOCAL_EOF always leads into a sent-FIN state and REMOTE_FIN into a got-FIN one."""
        for (state, event), after in ALLOWED.items():
            if event is I.LOCAL_EOF:
                self.assertIn(after, SENT_FIN_STATES)
            elif event is I.REMOTE_FIN:
                self.assertIn(after, GOT_FIN_STATES)


class ChannelTests(SynchronousTestCase):
    """A Channel record starts as told and changes state only through the table."""

    def test_newChannel(self):
        """A new channel holds its credit and a receive window of the size given, unpaused."""
        ch = Channel(3, S.OPENING, 100, 2048, 8192, LinkEstimate(), 5.0)
        self.assertEqual((ch.id, ch.state, ch.send_credit, ch.pending, ch.paused, ch.local_full),
                         (3, S.OPENING, 100, [], 0, False))
        self.assertEqual((ch.window.size, ch.window.max_size, ch.window.allowed),
                         (2048, 8192, 2048))

    def test_advance(self):
        """Channel.advance moves along the table and returns the new state."""
        ch = Channel(1, S.CONNECTING, 100, 2048, 8192, LinkEstimate(), 0.0)
        self.assertIs(ch.advance(I.REMOTE_FIN), S.CONNECTING_GOT_FIN)
        self.assertIs(ch.advance(I.OPENED), S.GOT_FIN)
        self.assertIs(ch.state, S.GOT_FIN)

    def test_illegalAdvanceKeepsState(self):
        """An input the state does not allow raises and leaves the state as it was."""
        ch = Channel(1, S.SENT_FIN, 100, 2048, 8192, LinkEstimate(), 0.0)
        self.assertRaises(IllegalTransition, ch.advance, I.LOCAL_EOF)
        self.assertIs(ch.state, S.SENT_FIN)
