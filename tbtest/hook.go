package tbtest

import (
	"bytes"
	"fmt"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// hook plugs the ThingsBoard behaviour into mochi. mochi calls the packet
// hooks of one client sequentially from that client's read goroutine:
// OnPublish runs before the PUBACK is written, OnPacketProcessed after it.
type hook struct {
	mqtt.HookBase
	s *Server
}

func (h *hook) ID() string { return "tbtest" }

func (h *hook) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck,
		mqtt.OnSessionEstablish, mqtt.OnDisconnect, mqtt.OnPacketRead,
		mqtt.OnSubscribe, mqtt.OnUnsubscribe, mqtt.OnPublish, mqtt.OnPacketProcessed,
		mqtt.OnPacketEncode:
		return true
	}
	return false
}

// OnConnect authenticates like ThingsBoard's access-token auth and answers
// refusals with ThingsBoard's CONNACK codes (WIRE §5.4), which differ from
// mochi's defaults.
func (h *hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	s := h.s
	user := string(pk.Connect.Username)
	s.mu.Lock()
	refuse := time.Now().Before(s.refuseUntil)
	_, known := s.gateways[user]
	s.mu.Unlock()

	v5 := cl.Properties.ProtocolVersion == 5
	var code byte
	var reason string
	switch {
	case refuse:
		code, reason = pick(v5, 0x88, 3), "connections refused (RefuseConnections)"
	case user == "" && pk.Connect.ClientIdentifier != "":
		code, reason = pick(v5, 0x85, 2), "empty username"
	case user == "":
		code, reason = pick(v5, 0x86, 5), "empty username and client id"
	case pk.Connect.PasswordFlag:
		code, reason = pick(v5, 0x86, 5), "unknown credentials (a password makes it basic MQTT credentials)"
	case !known:
		code, reason = pick(v5, 0x86, 5), "unknown access token"
	default:
		// ThingsBoard has no keep-alive watchdog (WIRE §5.1): disable
		// mochi's read deadline of 1.5 × keep-alive.
		cl.State.Keepalive = 0
		return nil
	}
	_ = cl.WritePacket(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Connack},
		ReasonCode:  code,
	})
	s.mu.Lock()
	s.rejections = append(s.rejections, Rejection{
		ClientID: pk.Connect.ClientIdentifier,
		Username: user,
		Reason:   fmt.Sprintf("CONNACK refused (code %d): %s", code, reason),
		Closed:   true,
	})
	s.notifyLocked()
	s.mu.Unlock()
	return packets.Code{Code: code, Reason: reason}
}

// OnPacketEncode sets CONNACK sessionPresent to !cleanSession as
// ThingsBoard does, although it keeps no session (WIRE §5.4).
func (h *hook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Connack && pk.ReasonCode == 0 {
		pk.SessionPresent = !cl.Properties.Clean
	}
	return pk
}

func pick(v5 bool, code5, code3 byte) byte {
	if v5 {
		return code5
	}
	return code3
}

// OnConnectAuthenticate accepts: OnConnect already refused what ThingsBoard
// refuses.
func (h *hook) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }

// OnACLCheck allows everything: filters are checked in OnSubscribe and
// publishes are never routed to other clients.
func (h *hook) OnACLCheck(*mqtt.Client, string, bool) bool { return true }

// OnSessionEstablish registers the gateway connection just before its
// CONNACK is written, so the gateway is reported connected once the client
// sees the CONNACK. A second connection with the same token evicts the
// first, as ThingsBoard allows one session per device.
func (h *hook) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	s := h.s
	now := time.Now()
	s.mu.Lock()
	g := s.gateways[string(cl.Properties.Username)]
	if g == nil {
		s.mu.Unlock()
		cl.Stop(errStopped)
		return
	}
	var evicted *mqtt.Client
	if old := g.conn; old != nil && !old.dead {
		s.dropConnLocked(old)
		evicted = old.cl
	}
	s.connSeq++
	c := &conn{cl: cl, id: cl.ID, seq: s.connSeq, token: g.token, gw: g, subs: map[string]byte{}, sessions: map[string]*device{}, gone: make(chan struct{})}
	g.conn = c
	s.conns[cl] = c
	if !g.own.message(now) {
		s.rejectLocked(c, "", nil, "rate limit (gateway device messages): session open", false)
	}
	s.notifyLocked()
	s.mu.Unlock()
	if evicted != nil {
		evicted.Stop(errStopped)
	}
}

// OnDisconnect forgets the connection and closes its sub-device sessions.
func (h *hook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	s := h.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.conns[cl]; c != nil {
		s.dropConnLocked(c)
		delete(s.conns, cl)
		s.notifyLocked()
	}
}

// OnPacketRead enforces maxPayloadSize on the MQTT remaining length, as
// Netty's MqttDecoder does, and makes PUBREL a no-op (ThingsBoard ignores it).
func (h *hook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	s := h.s
	if pk.FixedHeader.Type == packets.Pubrel {
		// A PUBACK for an id the server never used is silently ignored by mochi.
		pk.FixedHeader = packets.FixedHeader{Type: packets.Puback, Remaining: 2}
		return pk, nil
	}
	if pk.FixedHeader.Remaining <= s.cfg.maxPayload {
		return pk, nil
	}
	s.mu.Lock()
	c := s.conns[cl]
	reason := fmt.Sprintf("packet remaining length %d exceeds maxPayloadSize %d", pk.FixedHeader.Remaining, s.cfg.maxPayload)
	r := Rejection{ClientID: cl.ID, Username: string(cl.Properties.Username), Reason: reason, Closed: true}
	if pk.FixedHeader.Type == packets.Publish {
		r.Topic, r.Payload = pk.TopicName, cloneBytes(pk.Payload)
	}
	s.rejections = append(s.rejections, r)
	if c != nil {
		s.dropConnLocked(c)
	}
	s.notifyLocked()
	s.mu.Unlock()
	return pk, packets.ErrRejectPacket
}

// OnSubscribe grants min(requested, 1) on the accepted filters (WIRE §1.2)
// and makes every other filter fail (SUBACK 0x80 on MQTT 3.1.1, 0x8F on 5) by
// handing mochi an invalid filter in its place.
func (h *hook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	s := h.s
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.conns[cl]
	filters := append(packets.Subscriptions(nil), pk.Filters...)
	p := &plan{}
	for i, f := range filters {
		if c == nil || c.dead {
			// A connection the server already cut (DropConnection, Stop):
			// the real server would never read this packet.
			filters[i].Filter = "#/" + f.Filter
			continue
		}
		if !acceptedFilters[f.Filter] {
			s.rejectLocked(c, f.Filter, nil, "subscription filter not accepted", false)
			filters[i].Filter = "#/" + f.Filter
			continue
		}
		c.subs[f.Filter] = min(f.Qos, 1)
		if f.Filter == topicSelfAttributes || f.Filter == topicSelfRPCRequestSub {
			if !c.gw.own.message(now) {
				s.rejectLocked(c, f.Filter, nil, "rate limit (gateway device messages): subscription", false)
			}
		}
		if f.Filter == topicSelfRPCRequestSub {
			p.after = append(p.after, s.flushQueueLocked(c.gw)...)
		}
	}
	if c != nil {
		c.post = p
	}
	s.notifyLocked()
	pk.Filters = filters
	return pk
}

// OnUnsubscribe drops the granted QoS of the filters.
func (h *hook) OnUnsubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	s := h.s
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.conns[cl]
	if c == nil {
		return pk
	}
	for _, f := range pk.Filters {
		if _, ok := c.subs[f.Filter]; !ok {
			continue
		}
		delete(c.subs, f.Filter)
		if f.Filter == topicSelfAttributes || f.Filter == topicSelfRPCRequestSub {
			c.gw.own.message(now)
		}
	}
	return pk
}

// OnPublish consumes every uplink: it is acted on and never routed to
// subscribers. The returned error tells mochi whether to write the PUBACK.
func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	s := h.s
	now := time.Now()
	s.mu.Lock()
	c := s.conns[cl]
	var seq uint64
	if c != nil {
		seq = c.seq
	}
	s.messages = append(s.messages, Message{
		Conn:     seq,
		ClientID: cl.ID,
		Username: string(cl.Properties.Username),
		Topic:    pk.TopicName,
		Payload:  cloneBytes(pk.Payload),
		QoS:      pk.FixedHeader.Qos,
		Time:     now,
	})
	if c == nil || c.dead {
		s.notifyLocked()
		s.mu.Unlock()
		return pk, packets.ErrRejectPacket
	}
	p := &plan{}
	s.dispatchLocked(c, pk, p, now)
	c.post = p
	hold, delay := s.holdAcks, s.ackDelay
	s.notifyLocked()
	s.mu.Unlock()

	if !p.verdict.acks() {
		return pk, packets.ErrRejectPacket
	}
	if pk.FixedHeader.Qos > 0 {
		if hold {
			return pk, packets.ErrRejectPacket
		}
		if delay > 0 {
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-c.gone: // the connection was cut meanwhile
				t.Stop()
				return pk, packets.ErrRejectPacket
			}
		}
	}
	return pk, packets.CodeSuccessIgnore
}

// OnPacketProcessed runs what must follow the answer to a packet: downlinks
// that come after the PUBACK or SUBACK, and closing the connection.
func (h *hook) OnPacketProcessed(cl *mqtt.Client, pk packets.Packet, _ error) {
	switch pk.FixedHeader.Type {
	case packets.Publish, packets.Subscribe:
	default:
		return
	}
	s := h.s
	s.mu.Lock()
	c := s.conns[cl]
	var p *plan
	if c != nil {
		p, c.post = c.post, nil
	}
	s.mu.Unlock()
	if p == nil {
		return
	}
	s.send(p.after)
	if p.verdict.closes() {
		cl.Stop(errStopped)
	}
}

// validJSON reports whether Gson would parse payload (an empty payload is
// JSON null). Gson's lenient extensions (comments, unquoted strings, NaN)
// are not emulated: such payloads count as unparseable.
func validJSON(payload []byte) bool {
	return len(bytes.TrimSpace(payload)) == 0 || jsonValid(payload)
}
