"""CoAP message layer of the EST-coaps server, over DTLS sessions.

aiocoap encodes and decodes messages and options; this layer does what a
server must around them: confirmable requests answered by piggybacked ACKs
and duplicates answered from a cache instead of running twice (RFC 7252
§4.5), unknown critical options refused (§5.4.1), and block-wise transfer in
both directions (RFC 7959) with Size1/Size2.  What a request means is the
``render`` callback's business (server/coap/resources.py).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiocoap import Message
from aiocoap.error import UnparsableMessage
from aiocoap.numbers.codes import Code
from aiocoap.numbers.optionnumbers import OptionNumber
from aiocoap.numbers.types import Type
from aiocoap.optiontypes import BlockOption

from estkit.errors import BadRequest, EstError, PayloadTooLarge
from estkit.protocol.coaps import CF_TEXT, allowed_of, code_for_error
from estkit.server.coap.dtls import DtlsSession

__all__ = ["CoapRequest", "CoapReply", "CoapExchange", "Render"]

log = logging.getLogger("estkit.server")

# RFC 7252 §4.8.2: how long a message ID identifies a request.
EXCHANGE_LIFETIME = 247.0
# Per session: remembered message IDs, and partly received or sent bodies.
MAX_DEDUP = 64
MAX_ASSEMBLIES = 4
# RFC 7959 §2.2: SZX 6 = 1024 bytes, our largest block (7 is BERT, TCP only).
MAX_SZX = 6
# The options this server acts on; any other critical one is refused (RFC 7252 §5.4.1).
_UNDERSTOOD = {OptionNumber.URI_HOST, OptionNumber.URI_PORT, OptionNumber.URI_PATH, OptionNumber.URI_QUERY,
               OptionNumber.CONTENT_FORMAT, OptionNumber.ACCEPT, OptionNumber.BLOCK1, OptionNumber.BLOCK2,
               OptionNumber.SIZE1, OptionNumber.SIZE2, OptionNumber.REQUEST_TAG}


@dataclass(frozen=True)
class CoapRequest:
    """A complete request (all its Block1 blocks): what ``render`` sees."""

    session: DtlsSession
    method: Code
    path: tuple[str, ...]
    query: tuple[str, ...]
    content_format: int | None
    accept: int | None
    payload: bytes


@dataclass(frozen=True)
class CoapReply:
    """A complete response before block-wise slicing."""

    code: Code
    payload: bytes = b""
    content_format: int | None = None
    max_age: int | None = None

    @classmethod
    def error(cls, exc: EstError) -> CoapReply:
        """RFC 9148 §5: the code for the error, a one-line diagnostic payload
        (RFC 7252 §5.5.2), and Max-Age for 5.03 like HTTP's Retry-After."""
        reason = exc.reason
        allowed = allowed_of(exc)
        if allowed:
            reason += f" (allowed: {', '.join(allowed)})"
        return cls(code_for_error(exc), reason.encode()[:256], CF_TEXT, exc.retry_after)


Render = Callable[[CoapRequest], Awaitable[CoapReply]]


@dataclass
class _Assembly:
    """A Block1 body being received (RFC 7959 §2.5)."""

    body: bytearray
    touched: float


@dataclass
class _SessionState:
    dedup: OrderedDict[tuple[int, bytes], tuple[float, bytes | None]] = field(default_factory=OrderedDict)
    uploads: OrderedDict[tuple[int, tuple[str, ...]], _Assembly] = field(default_factory=OrderedDict)
    # Responses larger than one block, kept for the follow-up requests (RFC 7959 §2.4).
    downloads: OrderedDict[tuple[int, tuple[str, ...]], tuple[float, CoapReply]] = field(default_factory=OrderedDict)
    busy: int = 0
    # Message IDs of this server's own (NON) messages to the peer (RFC 7252 §4.4).
    next_mid: int = field(default_factory=lambda: secrets.randbelow(0x10000))


class CoapExchange:
    """Turns DTLS application data into ``render`` calls and back."""

    def __init__(self, render: Render, *, max_body: int, max_in_flight: int = 4) -> None:
        self.render = render
        self.max_body = max_body
        self.max_in_flight = max_in_flight
        self.states: dict[int, _SessionState] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def closed(self, session: DtlsSession) -> None:
        """Forget a session's exchanges."""
        self.states.pop(session.id, None)

    def on_message(self, session: DtlsSession, data: bytes) -> None:
        """One CoAP message from a session (DtlsEndpoint's callback)."""
        try:
            msg = Message.decode(data)
            # RFC 7252 §3: token lengths 9-15 are reserved and a payload marker
            # followed by no payload is a format error; aiocoap lets both pass.
            if (data[0] & 0x0F) > 8 or (not msg.payload and data[-1:] == b"\xff"
                                        and _options(data[:-1]) == _options(data)):
                raise UnparsableMessage("message format error (RFC 7252 §3)")
        except (UnparsableMessage, ValueError, IndexError):
            # RFC 7252 §4.2/4.3: a message with a format error is rejected; a
            # CON with a readable header gets a Reset, anything else is dropped.
            if len(data) >= 4 and data[0] >> 6 == 1 and (data[0] >> 4) & 3 == Type.CON:
                session.send(bytes([0x70, 0, data[2], data[3]]))
            return
        if msg.mtype in (Type.ACK, Type.RST):
            return  # this server sends no confirmable messages to be acknowledged
        if not msg.code.is_request():
            if msg.mtype == Type.CON:  # an empty CON (a ping) or a response: Reset (RFC 7252 §4.3)
                session.send(bytes([0x70, 0]) + msg.mid.to_bytes(2, "big"))
            return
        st = self.states.setdefault(session.id, _SessionState())
        now = time.monotonic()
        self._expire(st, now)
        key = (msg.mid, msg.token)
        seen = st.dedup.get(key)
        if seen is not None:
            # RFC 7252 §4.5: a duplicate is not processed again; it gets the same
            # answer (none yet while the first copy is still being handled).
            if seen[1] is not None:
                session.send(seen[1])
            return
        if st.busy >= self.max_in_flight:
            self._answer(session, st, msg, CoapReply(Code.SERVICE_UNAVAILABLE, b"too many requests in flight",
                                                     CF_TEXT, 1), remember=False)
            return
        st.dedup[key] = (now + EXCHANGE_LIFETIME, None)
        while len(st.dedup) > MAX_DEDUP:
            st.dedup.popitem(last=False)
        st.busy += 1
        task = asyncio.get_running_loop().create_task(self._handle(session, st, msg))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    @staticmethod
    def _expire(st: _SessionState, now: float) -> None:
        while st.dedup and next(iter(st.dedup.values()))[0] < now:
            st.dedup.popitem(last=False)
        for k in [k for k, (t, _r) in st.downloads.items() if t < now]:
            del st.downloads[k]
        for k in [k for k, a in st.uploads.items() if a.touched + EXCHANGE_LIFETIME < now]:
            del st.uploads[k]

    async def _handle(self, session: DtlsSession, st: _SessionState, msg: Message) -> None:
        try:
            reply, extra = await self._respond(session, st, msg)
        except EstError as exc:
            reply, extra = CoapReply.error(exc), {}
        except Exception:
            log.exception("internal error on a CoAP request from %s", session.peer_str)
            reply, extra = CoapReply(Code.INTERNAL_SERVER_ERROR, b"internal server error", CF_TEXT), {}
        finally:
            st.busy -= 1
        self._answer(session, st, msg, reply, extra=extra)

    def _answer(self, session: DtlsSession, st: _SessionState, req: Message, reply: CoapReply, *,
                extra: dict[str, object] | None = None, remember: bool = True) -> None:
        out = Message(code=reply.code, payload=reply.payload)
        if reply.content_format is not None:
            out.opt.content_format = reply.content_format
        if reply.max_age is not None:
            out.opt.max_age = reply.max_age
        for name, value in (extra or {}).items():
            setattr(out.opt, name, value)
        # RFC 7252 §5.2.1: piggybacked on the ACK of a CON; a NON gets a NON.
        out.mtype = Type.ACK if req.mtype == Type.CON else Type.NON
        if req.mtype == Type.CON:
            out.mid = req.mid
        else:
            out.mid = st.next_mid = (st.next_mid + 1) & 0xFFFF
        out.token = req.token
        raw = out.encode()
        key = (req.mid, req.token)
        if remember and key in st.dedup:
            st.dedup[key] = (st.dedup[key][0], raw)
        session.send(raw)

    async def _respond(self, session: DtlsSession, st: _SessionState,
                       msg: Message) -> tuple[CoapReply, dict[str, object]]:
        for opt in msg.opt.option_list():
            if opt.number.is_critical() and opt.number not in _UNDERSTOOD:
                return CoapReply(Code.BAD_OPTION, f"unsupported critical option {int(opt.number)}".encode(),
                                 CF_TEXT), {}
        path, query = tuple(msg.opt.uri_path), tuple(msg.opt.uri_query)
        where = (int(msg.code), path + ("?",) + query)
        block1, block2 = msg.opt.block1, msg.opt.block2
        extra: dict[str, object] = {}
        szx = MAX_SZX
        if block2 is not None:
            if block2.size_exponent > MAX_SZX:
                raise BadRequest("Block2 size exponent 7 (BERT) is for CoAP over TCP only (RFC 8323 §6)")
            szx = min(szx, block2.size_exponent)  # RFC 7959 §2.4: the client may ask for smaller blocks
            if block2.block_number > 0:
                return self._next_block(st, where, block2, msg.code)
        payload = msg.payload
        if block1 is not None:
            # RFC 9175 §3.3: blocks with another Request-Tag belong to another body.
            tag = tuple(t.hex() for t in msg.opt.request_tag)
            got = self._upload(st, (where[0], where[1] + ("#",) + tag), msg, block1)
            if not isinstance(got, bytes):
                return got
            payload = got
            extra["block1"] = BlockOption.BlockwiseTuple(block1.block_number, False, block1.size_exponent)
        elif len(payload) > self.max_body:
            raise PayloadTooLarge(f"request body over server.max_body_bytes ({self.max_body} bytes)")
        fmt, accept = msg.opt.content_format, msg.opt.accept
        reply = await self.render(CoapRequest(session, msg.code, path, query, None if fmt is None else int(fmt),
                                              None if accept is None else int(accept), bytes(payload)))
        size = 1 << (szx + 4)
        if len(reply.payload) > size or block2 is not None:
            # RFC 7959 §2.4: the first block, the total in Size2 (§4), the rest kept for the follow-ups.
            if len(reply.payload) > size:
                st.downloads[where] = (time.monotonic() + EXCHANGE_LIFETIME, reply)
                while len(st.downloads) > MAX_ASSEMBLIES:
                    st.downloads.popitem(last=False)
            reply, more = _slice(reply, 0, size)
            extra["block2"] = BlockOption.BlockwiseTuple(0, more, szx)
            extra["size2"] = len(st.downloads[where][1].payload) if more else len(reply.payload)
        return reply, extra

    def _next_block(self, st: _SessionState, where: tuple[int, tuple[str, ...]], block2: BlockOption.BlockwiseTuple,
                    method: Code) -> tuple[CoapReply, dict[str, object]]:
        kept = st.downloads.get(where)
        if kept is None:
            # A follow-up without a first block: the response is not held (never
            # made, or expired); a POST must not be run again to rebuild it.
            return CoapReply(Code.REQUEST_ENTITY_INCOMPLETE,
                             f"no {method.name} response to continue: ask for block 0 first".encode(), CF_TEXT), {}
        full = kept[1]
        if block2.start >= len(full.payload):
            return CoapReply(Code.BAD_REQUEST, b"Block2 past the end of the response", CF_TEXT), {}
        part, more = _slice(full, block2.start, block2.size)
        return part, {"block2": BlockOption.BlockwiseTuple(block2.block_number, more, block2.size_exponent),
                      "size2": len(full.payload)}

    def _upload(self, st: _SessionState, where: tuple[int, tuple[str, ...]], msg: Message,
                block1: BlockOption.BlockwiseTuple) -> bytes | tuple[CoapReply, dict[str, object]]:
        """One Block1 block: the whole body at the last one, else the reply to send."""
        if block1.size_exponent > MAX_SZX:
            raise BadRequest("Block1 size exponent 7 (BERT) is for CoAP over TCP only (RFC 8323 §6)")
        if msg.opt.size1 is not None and msg.opt.size1 > self.max_body:
            # RFC 7959 §4: refuse early, saying how much is accepted.
            return (CoapReply(Code.REQUEST_ENTITY_TOO_LARGE,
                                     f"request body over server.max_body_bytes ({self.max_body} bytes)".encode(),
                                     CF_TEXT), {"size1": self.max_body})
        if block1.more and len(msg.payload) != block1.size:
            raise BadRequest("a Block1 block that is not the last must be exactly its block size (RFC 7959 §2.3)")
        asm = st.uploads.get(where)
        if block1.block_number == 0:
            asm = st.uploads[where] = _Assembly(bytearray(), time.monotonic())
            while len(st.uploads) > MAX_ASSEMBLIES:
                st.uploads.popitem(last=False)
        if asm is None or block1.start != len(asm.body):
            # RFC 7959 §2.9.2: a block out of order is refused; the client starts over.
            st.uploads.pop(where, None)
            return (CoapReply(Code.REQUEST_ENTITY_INCOMPLETE,
                                     b"Block1 out of order: start again at block 0", CF_TEXT), {})
        asm.body += msg.payload
        asm.touched = time.monotonic()
        if len(asm.body) > self.max_body:
            del st.uploads[where]
            return (CoapReply(Code.REQUEST_ENTITY_TOO_LARGE,
                                     f"request body over server.max_body_bytes ({self.max_body} bytes)".encode(),
                                     CF_TEXT), {"size1": self.max_body})
        if block1.more:
            # RFC 7959 §2.3: 2.31 Continue acknowledges the block (we take the client's size).
            return (CoapReply(Code.CONTINUE), {"block1": block1})
        del st.uploads[where]
        return bytes(asm.body)


def _options(data: bytes) -> list[tuple[int, bytes]] | None:
    """The options of an encoded message, None when it does not decode."""
    try:
        return [(int(o.number), o.encode()) for o in Message.decode(data).opt.option_list()]
    except (UnparsableMessage, ValueError, IndexError):
        return None


def _slice(reply: CoapReply, start: int, size: int) -> tuple[CoapReply, bool]:
    part = reply.payload[start:start + size]
    return CoapReply(reply.code, part, reply.content_format, reply.max_age), start + size < len(reply.payload)
