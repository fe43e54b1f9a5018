-- Wireshark dissector for ttnet / TTPython UDP packets (docs/wire-format.md).
--
-- One UDP datagram carries one packet; byte 0 is its type. Integers are
-- little-endian, the 4-byte CRC trailer big-endian:
--
--   REQ  type(1)=0 message_id(8) message_type(2)=0 num_packets(4) crc(4)   19 B
--   DATA type(1)=1 message_id(8) sequence_num(4)   data(<=1200)   crc(4)   17+n B
--   ACK  type(1)=2 message_id(8) sequence_num(4)                  crc(4)   17 B
--   FAST type(1)=3 message_id(8) sequence_num(4)=0 data(<=1200)   crc(4)   17+n B
--        (ttnet's fast-start extension: REQ and the only DATA in one)
--
-- The CRC is CRC-32 with polynomial 0x04C11DB7, init 0, no reflection, no
-- final XOR, over every byte before the trailer (ttnet/wire.py); this
-- dissector computes it and flags a mismatch (ttnet.crc.status == 0, an
-- expert error "Bad CRC").
--
-- Fields (filter or `tshark -e` names):
--   ttnet.type         packet type (0 REQ, 1 DATA, 2 ACK)
--   ttnet.msgid        message id (uint64)
--   ttnet.msgtype      REQ: message type (always 0)
--   ttnet.num_packets  REQ: DATA packets the message has
--   ttnet.seq          DATA, ACK: sequence number (packet index mod 2001)
--   ttnet.len          DATA: bytes of data
--   ttnet.data         DATA: the data
--   ttnet.crc          the CRC trailer as sent
--   ttnet.crc.computed the CRC computed over the packet
--   ttnet.crc.status   1 good, 0 bad
--   ttnet.tb.flow, ttnet.tb.msg
--                      testbed payloads only: flow index and message number
--                      from the header (b"TB" u16 u32) at the start of a
--                      message's first DATA packet (testbed/spec/payloads.py)
--
-- Registered on UDP port 8225 (TTPython's and ttnet's default) and 8226
-- (where testbed `run:` programs bind), and as a heuristic UDP dissector
-- for other ports (a datagram whose length fits its type byte and whose
-- CRC checks). Install: docs/capture.md (copy to
-- ~/.local/lib/wireshark/plugins/, or `tshark -X lua_script:ttnet.lua`).
-- Works with Lua 5.1-5.4 (bit32, LuaBitOp or native operators).

local ttnet = Proto("ttnet", "ttnet / TTPython UDP protocol")

local TYPE_NAMES = { [0] = "REQ", [1] = "DATA", [2] = "ACK", [3] = "FAST" }
local PORTS = { 8225, 8226 }
local MAX_DATA = 1200
local HEADER = 13      -- type + message id + sequence number (DATA, ACK)
local CRC_SIZE = 4
local REQ_SIZE = 19
local ACK_SIZE = 17

local f = {
    type = ProtoField.uint8("ttnet.type", "Packet type", base.DEC, TYPE_NAMES),
    msgid = ProtoField.uint64("ttnet.msgid", "Message id", base.HEX),
    msgtype = ProtoField.uint16("ttnet.msgtype", "Message type", base.DEC),
    num_packets = ProtoField.uint32("ttnet.num_packets", "Packet count", base.DEC),
    seq = ProtoField.uint32("ttnet.seq", "Sequence number", base.DEC),
    len = ProtoField.uint32("ttnet.len", "Data length", base.DEC),
    data = ProtoField.bytes("ttnet.data", "Data"),
    crc = ProtoField.uint32("ttnet.crc", "CRC", base.HEX),
    crc_computed = ProtoField.uint32("ttnet.crc.computed", "Computed CRC", base.HEX),
    crc_status = ProtoField.uint8("ttnet.crc.status", "CRC status", base.DEC,
                                  { [0] = "Bad", [1] = "Good" }),
    tb_flow = ProtoField.uint16("ttnet.tb.flow", "Testbed flow index", base.DEC),
    tb_msg = ProtoField.uint32("ttnet.tb.msg", "Testbed message number", base.DEC),
}
ttnet.fields = { f.type, f.msgid, f.msgtype, f.num_packets, f.seq, f.len, f.data,
                 f.crc, f.crc_computed, f.crc_status, f.tb_flow, f.tb_msg }

local e_bad_crc = ProtoExpert.new("ttnet.crc.bad", "Bad CRC (the receiver drops it)",
                                  expert.group.CHECKSUM, expert.severity.ERROR)
local e_malformed = ProtoExpert.new("ttnet.malformed", "Not a ttnet packet",
                                    expert.group.MALFORMED, expert.severity.ERROR)
ttnet.experts = { e_bad_crc, e_malformed }

-- 32-bit operations, results always in [0, 2^32), whatever Lua this is.
local TWO32 = 4294967296
local band, bxor, lshift, rshift
if bit32 then
    band, bxor, lshift, rshift = bit32.band, bit32.bxor, bit32.lshift, bit32.rshift
elseif bit then   -- LuaBitOp: signed results
    band = function(a, b) return bit.band(a, b) % TWO32 end
    bxor = function(a, b) return bit.bxor(a, b) % TWO32 end
    lshift = function(a, n) return bit.lshift(a, n) % TWO32 end
    rshift = function(a, n) return bit.rshift(a, n) % TWO32 end
else              -- Lua 5.3+: native integer operators (a syntax error before 5.3)
    local ops = load([[
        return function(a, b) return a & b end, function(a, b) return a ~ b end,
               function(a, n) return (a << n) & 0xFFFFFFFF end,
               function(a, n) return (a & 0xFFFFFFFF) >> n end]])
    band, bxor, lshift, rshift = ops()
end

local CRC_TABLE = {}
for i = 0, 255 do
    local c = lshift(i, 24)
    for _ = 1, 8 do
        if band(c, 0x80000000) ~= 0 then
            c = bxor(lshift(c, 1), 0x04C11DB7)
        else
            c = lshift(c, 1)
        end
    end
    CRC_TABLE[i] = c
end

-- CRC-32 of a Lua string: poly 0x04C11DB7, init 0, not reflected, no final XOR.
local function crc32(s)
    local crc = 0
    for i = 1, #s do
        local idx = band(bxor(rshift(crc, 24), s:byte(i)), 0xFF)
        crc = bxor(lshift(crc, 8), CRC_TABLE[idx])
    end
    return crc
end

-- The expected datagram size of a type, or nil when the length cannot be one.
local function length_fits(kind, n)
    if kind == 0 then return n == REQ_SIZE end
    if kind == 2 then return n == ACK_SIZE end
    if kind == 1 or kind == 3 then
        return n >= HEADER + CRC_SIZE and n <= HEADER + MAX_DATA + CRC_SIZE
    end
    return false
end

local function crc_of(tvb, n)
    local computed = crc32(tvb:raw(0, n - CRC_SIZE))
    local sent = tvb(n - CRC_SIZE, CRC_SIZE):uint()
    return sent, computed
end

local function dissect(tvb, pinfo, tree)
    local n = tvb:len()
    pinfo.cols.protocol = "TTNET"
    local subtree = tree:add(ttnet, tvb(), "ttnet")
    if n < ACK_SIZE or not length_fits(tvb(0, 1):uint(), n) then
        subtree:add_proto_expert_info(e_malformed, string.format(
            "%d bytes with type byte %d: not a ttnet packet", n, n > 0 and tvb(0, 1):uint() or -1))
        pinfo.cols.info = string.format("ttnet: malformed (%d bytes)", n)
        return n
    end
    local kind = tvb(0, 1):uint()
    subtree:add(f.type, tvb(0, 1))
    subtree:add_le(f.msgid, tvb(1, 8))
    local id = tvb(1, 8):le_uint64()
    local info
    if kind == 0 then
        subtree:add_le(f.msgtype, tvb(9, 2))
        subtree:add_le(f.num_packets, tvb(11, 4))
        info = string.format("REQ  id=0x%s packets=%d", id:tohex(), tvb(11, 4):le_uint())
    else
        subtree:add_le(f.seq, tvb(9, 4))
        local seq = tvb(9, 4):le_uint()
        if kind == 1 or kind == 3 then
            local len = n - HEADER - CRC_SIZE
            subtree:add(f.len, len):set_generated()
            if len > 0 then
                subtree:add(f.data, tvb(HEADER, len))
            end
            info = string.format("%s id=0x%s seq=%d len=%d", TYPE_NAMES[kind], id:tohex(),
                                 seq, len)
            -- A testbed message starts with b"TB" | flow u16 | message u32.
            if seq == 0 and len >= 8 and tvb(HEADER, 2):string() == "TB" then
                local tb = subtree:add(tvb(HEADER, 8), "Testbed payload header")
                tb:add_le(f.tb_flow, tvb(HEADER + 2, 2))
                tb:add_le(f.tb_msg, tvb(HEADER + 4, 4))
                info = info .. string.format(" [flow %d msg %d]",
                                             tvb(HEADER + 2, 2):le_uint(),
                                             tvb(HEADER + 4, 4):le_uint())
            end
        else
            info = string.format("ACK  id=0x%s seq=%d", id:tohex(), seq)
        end
    end
    local sent, computed = crc_of(tvb, n)
    local crc_item = subtree:add(f.crc, tvb(n - CRC_SIZE, CRC_SIZE))
    subtree:add(f.crc_computed, computed):set_generated()
    if sent == computed then
        subtree:add(f.crc_status, 1):set_generated()
    else
        subtree:add(f.crc_status, 0):set_generated()
        crc_item:add_proto_expert_info(e_bad_crc, string.format(
            "Bad CRC: 0x%08x sent, 0x%08x computed", sent, computed))
        info = info .. " [BAD CRC]"
    end
    pinfo.cols.info = info
    return n
end

function ttnet.dissector(tvb, pinfo, tree)
    return dissect(tvb, pinfo, tree)
end

-- Other ports: only a datagram that is clearly ours (length fits the type,
-- CRC checks), so other UDP traffic is never taken for ttnet.
local function heuristic(tvb, pinfo, tree)
    local n = tvb:len()
    if n < ACK_SIZE or not length_fits(tvb(0, 1):uint(), n) then
        return false
    end
    local sent, computed = crc_of(tvb, n)
    if sent ~= computed then
        return false
    end
    dissect(tvb, pinfo, tree)
    return true
end

local udp_table = DissectorTable.get("udp.port")
for _, port in ipairs(PORTS) do
    udp_table:add(port, ttnet)
end
ttnet:register_heuristic("udp", heuristic)
