package tbtest

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
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
// mochi's defaults. A known access token as user name is accepted with any
// password and any client id (WIRE §10.3: the basic-credentials lookup
// misses and the server falls back to the token). Opening the gateway's own
// session costs one message of its transportGatewayDevice* bucket (WIRE
// §10.4); over the limit the CONNECT is refused as rate limited.
func (h *hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	s := h.s
	user := string(pk.Connect.Username)
	now := time.Now()
	s.mu.Lock()
	refuse := now.Before(s.refuseUntil)
	g := s.gateways[user]
	prov := isProvisionConnect(user, pk.Connect.ClientIdentifier)
	limited := g != nil && !refuse && !prov && !g.own.message(now)
	s.mu.Unlock()

	v5 := cl.Properties.ProtocolVersion == 5
	hasUser, hasPass := pk.Connect.UsernameFlag, pk.Connect.PasswordFlag
	var code, disc byte
	var reason string
	switch {
	case refuse:
		code, disc, reason = pick(v5, codeServerUnavailable, 3), codeServerBusy, "connections refused (RefuseConnections)"
	case prov:
		// A provision session is accepted at once (WIRE §10.7).
		cl.State.Keepalive = 0
		return nil
	case limited:
		code, disc, reason = pick(v5, codeConnectionRateExceeded, 3), codeMessageRateTooHigh, "rate limit (gateway device messages): session open"
	case g != nil:
		// ThingsBoard has no keep-alive watchdog (WIRE §5.1): disable
		// mochi's read deadline of 1.5 × keep-alive.
		cl.State.Keepalive = 0
		return nil
	case hasUser && hasPass || hasUser != hasPass:
		code, reason = pick(v5, codeBadCredentials, 5), "unknown credentials"
	case strings.TrimSpace(pk.Connect.ClientIdentifier) != "":
		code, reason = pick(v5, codeClientIDNotValid, 2), "empty username"
	default:
		code, reason = pick(v5, codeBadCredentials, 5), "empty username and client id"
	}
	if disc == 0 {
		disc = code // closeCtx(ctx, returnCode) repeats the CONNACK code
	}
	_ = cl.WritePacket(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Connack},
		ReasonCode:  code,
	})
	if v5 {
		writeDisconnect(cl, disc)
	}
	s.mu.Lock()
	s.addRejectionLocked(Rejection{
		ClientID: pk.Connect.ClientIdentifier,
		Username: user,
		Reason:   fmt.Sprintf("CONNACK refused (code %d): %s", code, reason),
		Closed:   true,
	})
	s.notifyLocked()
	s.mu.Unlock()
	return packets.Code{Code: code, Reason: reason}
}

// OnPacketEncode makes mochi's packets look like ThingsBoard's (Netty's):
// CONNACK sessionPresent is !cleanSession although nothing is kept; CONNACK,
// PUBACK, SUBACK, UNSUBACK and DISCONNECT carry no MQTT 5 properties (no
// Receive Maximum, Topic Alias Maximum, Maximum QoS, assigned client id,
// reason string, nor user properties copied from the PUBLISH: WIRE §5.4,
// §10.9); a successful PUBACK has no reason code (mochi's "granted QoS 1"
// is not a PUBACK code) and a DISCONNECT 0x00 is encoded without one.
func (h *hook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	switch pk.FixedHeader.Type {
	case packets.Connack:
		if pk.ReasonCode == 0 {
			pk.SessionPresent = !cl.Properties.Clean
		}
		pk.Properties = packets.Properties{}
	case packets.Puback:
		if pk.ReasonCode < codeUnspecifiedError {
			pk.ReasonCode = codeSuccess
		}
		pk.Properties = packets.Properties{}
	case packets.Suback, packets.Unsuback:
		pk.Properties = packets.Properties{}
	case packets.Disconnect:
		pk.Properties = packets.Properties{}
		if pk.ReasonCode == codeSuccess {
			pk.ProtocolVersion = 4 // no reason code, no properties: E0 00
		}
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
	s.mu.Lock()
	if isProvisionConnect(string(cl.Properties.Username), cl.ID) {
		s.provisionSessionLocked(cl)
		s.mu.Unlock()
		return
	}
	g := s.gateways[string(cl.Properties.Username)]
	if g == nil {
		s.mu.Unlock()
		cl.Stop(errStopped)
		return
	}
	var evicted *conn
	if old := g.conn; old != nil && !old.dead {
		s.dropConnLocked(old)
		evicted = old
	}
	s.connSeq++
	c := &conn{cl: cl, id: cl.ID, seq: s.connSeq, token: g.token, gw: g, v5: cl.Properties.ProtocolVersion == 5,
		subs: map[string]byte{}, sessions: map[string]*device{}, gone: make(chan struct{})}
	g.conn = c
	s.conns[cl] = c
	s.info("tbtest: gateway connected", "conn", c.seq, "client", c.id, "gateway", g.dev.name, "mqtt", cl.Properties.ProtocolVersion)
	s.notifyLocked()
	s.mu.Unlock()
	if evicted != nil {
		if evicted.v5 {
			writeDisconnect(evicted.cl, codeSessionTakenOver)
		}
		evicted.cl.Stop(errStopped)
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
		s.info("tbtest: gateway disconnected", "conn", c.seq, "client", c.id)
		s.notifyLocked()
	}
}

// OnPacketRead enforces maxPayloadSize on the MQTT remaining length, as
// Netty's MqttDecoder does (DISCONNECT 0x81 on MQTT 5), makes PUBREL a no-op
// (ThingsBoard ignores it), strips MQTT 5 topic aliases (ThingsBoard
// ignores them: a publish with an alias and no topic name matches no topic)
// and answers an MQTT 5 client's DISCONNECT with DISCONNECT 0x00 (WIRE §5.4).
func (h *hook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	s := h.s
	v5 := cl.Properties.ProtocolVersion == 5
	switch pk.FixedHeader.Type {
	case packets.Pubrel:
		// A PUBACK for an id the server never used is silently ignored by mochi.
		pk.FixedHeader = packets.FixedHeader{Type: packets.Puback, Remaining: 2}
		return pk, nil
	case packets.Disconnect:
		if v5 {
			writeDisconnect(cl, codeSuccess)
		}
		return pk, nil
	case packets.Publish:
		if v5 && (pk.Properties.TopicAliasFlag || pk.Properties.TopicAlias != 0) {
			pk.Properties.TopicAlias, pk.Properties.TopicAliasFlag = 0, false
			if pk.TopicName == "" {
				pk.TopicName = emptyTopic
			}
		}
	}
	if pk.FixedHeader.Remaining <= s.cfg.maxPayload {
		return pk, nil
	}
	s.mu.Lock()
	c := s.conns[cl]
	reason := fmt.Sprintf("packet remaining length %d exceeds maxPayloadSize %d", pk.FixedHeader.Remaining, s.cfg.maxPayload)
	r := Rejection{ClientID: cl.ID, Username: string(cl.Properties.Username), Reason: reason, Closed: true}
	if pk.FixedHeader.Type == packets.Publish {
		r.Topic, r.Payload = publishTopic(pk), cloneBytes(pk.Payload)
	}
	s.addRejectionLocked(r)
	if c != nil {
		s.dropConnLocked(c)
	}
	s.notifyLocked()
	s.mu.Unlock()
	if v5 {
		writeDisconnect(cl, codeMalformedPacket)
	}
	return pk, packets.ErrRejectPacket
}

// emptyTopic stands in for the empty topic name of an MQTT 5 publish that
// used a topic alias, which mochi would drop unanswered. A NUL cannot occur
// in a topic a client sent.
const emptyTopic = "\x00tbtest:empty-topic"

// publishTopic is the topic name as the client sent it.
func publishTopic(pk packets.Packet) string {
	if pk.TopicName == emptyTopic {
		return ""
	}
	return pk.TopicName
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
		if c.prov {
			if f.Filter != topicProvisionResponse {
				s.rejectLocked(c, f.Filter, nil, "provision session: subscription filter not accepted", false)
				filters[i].Filter = "#/" + f.Filter
				continue
			}
			c.subs[f.Filter] = min(f.Qos, 1)
			continue
		}
		if !acceptedFilters[f.Filter] {
			s.rejectLocked(c, f.Filter, nil, "subscription filter not accepted", false)
			filters[i].Filter = "#/" + f.Filter
			continue
		}
		c.subs[f.Filter] = min(f.Qos, 1)
		if counted, attrTopic := selfSubscription(f.Filter); counted {
			if !c.gw.own.message(now) {
				s.rejectLocked(c, f.Filter, nil, "rate limit (gateway device messages): subscription", false)
			}
			if attrTopic != "" {
				c.attrTopic = attrTopic
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
		if counted, _ := selfSubscription(f.Filter); counted {
			c.gw.own.message(now)
		}
		if f.Filter == c.attrTopic {
			c.resetAttrTopic()
		}
	}
	return pk
}

// OnPublish consumes every uplink: it is acted on and never routed to
// subscribers. The returned error tells mochi whether to write the PUBACK
// and with which MQTT 5 reason code. Control functions run first.
func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	s := h.s
	pk.TopicName = publishTopic(pk)
	act := Action{}
	if s.ctl.n.Load() > 0 {
		s.mu.Lock()
		c := s.conns[cl]
		s.mu.Unlock()
		if c != nil && !c.dead && !c.prov {
			act = s.runControls(c, pk.TopicName, pk.Payload, pk.FixedHeader.Qos)
			if act.kind == actDelay {
				s.pause(c, act.delay)
			}
		}
	}
	now := time.Now()
	s.mu.Lock()
	c := s.conns[cl]
	var seq uint64
	if c != nil {
		seq = c.seq
	}
	// mochi decodes every packet from a fresh buffer: the payload can be
	// kept without a copy.
	s.messages = append(s.messages, Message{
		Conn:     seq,
		ClientID: cl.ID,
		Username: string(cl.Properties.Username),
		Topic:    pk.TopicName,
		Payload:  pk.Payload,
		QoS:      pk.FixedHeader.Qos,
		Time:     now,
	})
	if c == nil || c.dead {
		s.notifyLocked()
		s.mu.Unlock()
		return pk, packets.ErrRejectPacket
	}
	p := &plan{}
	switch act.kind {
	case actDrop:
		p.refuse()
	case actClose:
		p.refuse()
		p.close = true
		s.dropConnLocked(c)
	case actDisconnect:
		p.refuse()
		p.closeWith(act.code)
		s.dropConnLocked(c)
	case actReason:
		p.fail(act.code)
	default:
		if c.prov {
			s.onProvisionPublish(&up{c: c, pk: pk, p: p, now: now})
		} else {
			s.dispatchLocked(c, pk, p, now)
			s.flushOpenedLocked(c, p)
		}
		if act.kind == actNoAck {
			p.refuse()
		}
	}
	c.post = p
	hold, delay := s.holdAcks, s.ackDelay
	s.notifyLocked()
	s.mu.Unlock()
	if s.log.Enabled(context.Background(), slog.LevelInfo) {
		s.logPublish(c, pk, p, act)
	}

	if pk.FixedHeader.Qos > 0 && !p.noAck {
		if hold {
			return pk, packets.ErrRejectPacket
		}
		if delay > 0 && !s.pause(c, delay) {
			return pk, packets.ErrRejectPacket
		}
	}
	return pk, p.ackError(c, pk.FixedHeader.Qos)
}

// logPublish logs a publish and its outcome.
func (s *Server) logPublish(c *conn, pk packets.Packet, p *plan, act Action) {
	args := []any{"conn", c.seq, "client", c.id, "topic", pk.TopicName, "qos", pk.FixedHeader.Qos,
		"bytes", len(pk.Payload), "answer", p.answer(c, pk.FixedHeader.Qos)}
	if p.close {
		args = append(args, "closed", true)
	}
	if act.kind != actPass {
		args = append(args, "control", act.kind.String())
	}
	for _, kv := range []struct {
		k string
		n int
	}{{"points", p.points}, {"attributes", p.attributes}, {"claims", p.claims}} {
		if kv.n > 0 {
			args = append(args, kv.k, kv.n)
		}
	}
	s.log.Info("tbtest: publish", args...)
	s.log.Debug("tbtest: publish payload", "conn", c.seq, "topic", pk.TopicName, "payload", string(pk.Payload))
}

// pause waits d; it reports false if the connection or the server was
// closed meanwhile.
func (s *Server) pause(c *conn, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-c.gone:
	case <-s.done:
	}
	return false
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
	if p != nil {
		s.finish(c, p)
	}
}

// validJSON reports whether Gson would parse payload (an empty payload is
// JSON null). Gson's lenient extensions (comments, unquoted strings, NaN)
// are not emulated: such payloads count as unparseable.
func validJSON(payload []byte) bool {
	return len(bytes.TrimSpace(payload)) == 0 || jsonValid(payload)
}
