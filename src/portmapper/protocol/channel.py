"""
A channel's life at one end of a link: named states and the transitions
between them, and the record the link core keeps per channel.

A channel is opened by one end (the *opener*: the server, for a user of a
public port) and accepted by the other (the *acceptor*: the client, which
connects to the target).  Each direction then ends on its own: the end
whose local socket reaches EOF sends FIN, and the far end shuts the write
side of its own socket.  A RESET, or the link's loss, ends both at once.

::

    opener                                  acceptor
    OPENING ──OPEN_OK──▶ OPEN               CONNECTING ──accept──▶ OPEN
    OPENING ──local EOF─▶ OPENING_SENT_FIN  CONNECTING ──FIN──▶ CONNECTING_GOT_FIN
    OPENING_SENT_FIN ──OPEN_OK──▶ SENT_FIN  CONNECTING_GOT_FIN ──accept──▶ GOT_FIN

    OPEN ──local EOF──▶ SENT_FIN ──FIN──▶ CLOSED
    OPEN ──FIN───────▶ GOT_FIN ──local EOF──▶ CLOSED
    any ──RESET, open failed, link lost──▶ CLOSED

``SENT_FIN`` is entered when the local socket's EOF is read; the FIN frame
itself leaves once the data read before it has (it may wait for credit).
:func:`advance` is the only way a state changes, so an event that is not
allowed in a state cannot pass silently: it raises :class:`IllegalTransition`.
The link core checks what the peer sends before it advances a channel (a
frame a state does not allow is a protocol error), so an IllegalTransition
is always a bug of ours.
"""

import enum

from portmapper.protocol.windows import ReceiveWindow


class State(enum.Enum):
    # Members are singletons: hash by identity, in C (Enum's own __hash__ is
    # Python code, and states are looked up several times per channel).
    __hash__ = object.__hash__

    OPENING = "opening"  # opener: OPEN sent, OPEN_OK not yet received
    OPENING_SENT_FIN = "opening, sent FIN"  # ... and the local side already ended
    CONNECTING = "connecting"  # acceptor: OPEN received, the target not yet connected
    CONNECTING_GOT_FIN = "connecting, got FIN"  # ... and the peer already ended
    OPEN = "open"
    SENT_FIN = "sent FIN"  # our side ended; the peer may still send
    GOT_FIN = "got FIN"  # the peer's side ended; we may still send
    CLOSED = "closed"


class Input(enum.Enum):
    __hash__ = object.__hash__

    OPENED = "open confirmed"  # OPEN_OK received (opener) or the target connected (acceptor)
    LOCAL_EOF = "local EOF"  # the local socket's read side ended
    REMOTE_FIN = "FIN received"
    RESET = "reset"  # either way, or the open failed, or the link is gone


class IllegalTransition(Exception):
    """An input that the channel's state does not allow."""


S, I = State, Input
TRANSITIONS = {
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
for _state in State:
    if _state is not S.CLOSED:
        TRANSITIONS[(_state, I.RESET)] = S.CLOSED
del S, I, _state

OPENING_STATES = frozenset({State.OPENING, State.OPENING_SENT_FIN})
CONNECTING_STATES = frozenset({State.CONNECTING, State.CONNECTING_GOT_FIN})
# States in which the local side has ended (no more DATA from us).
SENT_FIN_STATES = frozenset({State.OPENING_SENT_FIN, State.SENT_FIN, State.CLOSED})
# States in which the peer has ended (DATA from it is a protocol error).
GOT_FIN_STATES = frozenset({State.CONNECTING_GOT_FIN, State.GOT_FIN, State.CLOSED})


def advance(state, event):
    """The state after ``event`` in ``state``; IllegalTransition if not allowed."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(f"{event.value} in state {state.value}") from None


# Why a channel's local reading is paused: the reasons are independent, and
# reading resumes only once none is left.
PAUSED_CREDIT = 1  # out of send credit
PAUSED_LINK = 2  # the link's own write buffer is full
PAUSED_EOF = 4  # the local side ended: nothing more to read


class Channel:
    """
    What the link core knows of one channel.  ``send_credit`` and
    ``pending`` are the sending side (credit the peer gave, data read
    locally that waits for credit); ``window`` is the receiving side;
    ``local_full`` is true while the local socket's write buffer is full
    (credit is held back); ``paused`` is the set of PAUSED_* reasons.
    """

    __slots__ = ("id", "state", "send_credit", "pending", "window", "paused", "local_full",
                 "early", "early_bytes")

    def __init__(self, channel_id, state, send_credit, window_size, max_window, link, now):
        self.id = channel_id
        self.state = state
        self.send_credit = send_credit
        self.pending = []
        self.window = ReceiveWindow(window_size, max_window, link, now)
        self.paused = 0
        self.local_full = False
        self.early = []  # acceptor: DATA received before the target connected
        self.early_bytes = 0

    def advance(self, event):
        """Move to the state ``event`` leads to (:func:`advance`, inlined: it runs per frame)."""
        try:
            self.state = TRANSITIONS[(self.state, event)]
        except KeyError:
            raise IllegalTransition(f"{event.value} in state {self.state.value}") from None
        return self.state
