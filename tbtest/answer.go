package tbtest

import (
	"fmt"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// How the server answers a PUBLISH (WIRE §2.2, §5.2, §5.4, §6): the PUBACK
// and its MQTT 5 reason code, whether the connection is closed and how.
// The rows of the error model map onto plan by the *Locked helpers below,
// which also record the Rejection.

// MQTT 5 reason codes the server sends. On MQTT 3.1.1 none of them reaches
// the wire: PUBACKs carry no code and the server closes the TCP connection
// instead of sending DISCONNECT.
const (
	codeSuccess                byte = 0x00
	codeUnspecifiedError       byte = 0x80
	codeMalformedPacket        byte = 0x81
	codeImplementationError    byte = 0x83
	codeClientIDNotValid       byte = 0x85
	codeBadCredentials         byte = 0x86
	codeServerUnavailable      byte = 0x88
	codeServerBusy             byte = 0x89
	codeServerShuttingDown     byte = 0x8B
	codeSessionTakenOver       byte = 0x8E
	codeTopicNameInvalid       byte = 0x90
	codeMessageRateTooHigh     byte = 0x96
	codeQuotaExceeded          byte = 0x97
	codePayloadFormatInvalid   byte = 0x99
	codeConnectionRateExceeded byte = 0x9F
)

// plan is the outcome of one packet: the answer and what follows it.
type plan struct {
	noAck bool // no PUBACK
	code  byte // the PUBACK's MQTT 5 reason code
	// decided is ThingsBoard's ackSent: the first failure of a multi-device
	// publish decides the PUBACK, and later outcomes change nothing.
	decided bool
	close   bool // close the connection once the packet is answered
	// disc asks for a DISCONNECT with discCode before the close (MQTT 5
	// only); without it the TCP connection is just closed.
	disc     bool
	discCode byte
	after    []outbound // downlinks written after the PUBACK/SUBACK
	opened   []*device  // sub-device sessions this packet opened
	// provisioned: a provision request was answered; the connection is
	// closed after the provision close delay.
	provisioned bool
	// What the packet stored, for the event log.
	points, attributes, claims int
}

// answer describes the PUBACK of p for the event log.
func (p *plan) answer(c *conn, qos byte) string {
	switch {
	case qos == 0:
		return "none (QoS 0)"
	case p.noAck:
		return "no PUBACK"
	case c.v5:
		return fmt.Sprintf("PUBACK 0x%02X", p.code)
	}
	return "PUBACK"
}

// closing reports that the connection is being closed by this packet.
func (p *plan) closing() bool { return p.close }

// fail decides the PUBACK with code unless an earlier failure did.
func (p *plan) fail(code byte) {
	if !p.decided {
		p.decided, p.noAck, p.code = true, false, code
	}
}

// withhold leaves the publish unacknowledged unless a failure decided it.
func (p *plan) withhold() {
	if !p.decided {
		p.noAck = true
	}
}

// refuse decides that no PUBACK is sent at all.
func (p *plan) refuse() { p.decided, p.noAck = true, true }

// closeWith closes the connection, after a DISCONNECT with code on MQTT 5.
func (p *plan) closeWith(code byte) { p.close, p.disc, p.discCode = true, true, code }

// ackError is what OnPublish returns to mochi to have it write the PUBACK
// of p: ErrRejectPacket for none, a Code for an MQTT 5 reason code,
// CodeSuccessIgnore for a plain one (and for a QoS 0 publish, which mochi
// would otherwise route to subscribers).
func (p *plan) ackError(c *conn, qos byte) error {
	switch {
	case p.noAck:
		return packets.ErrRejectPacket
	case qos > 0 && c.v5 && p.code >= codeUnspecifiedError:
		return packets.Code{Code: p.code}
	}
	return packets.CodeSuccessIgnore
}

// finish closes the connection as p asks, after the downlinks that follow
// the answer.
func (s *Server) finish(c *conn, p *plan) {
	s.send(p.after)
	if !p.close {
		if p.provisioned {
			s.scheduleProvisionClose(c)
		}
		return
	}
	if p.disc && c.v5 {
		writeDisconnect(c.cl, p.discCode)
	}
	c.cl.Stop(errStopped)
}

// writeDisconnect writes a DISCONNECT with code to an MQTT 5 client (the
// caller closes the connection afterwards).
func writeDisconnect(cl *mqtt.Client, code byte) {
	_ = cl.WritePacket(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Disconnect},
		ReasonCode:  code,
	})
}

// --- the rows of the error model ---

func (s *Server) closeConnLocked(u *up, reason string) {
	s.rejectLocked(u.c, u.pk.TopicName, u.pk.Payload, reason, true)
	u.p.close = true
	s.dropConnLocked(u.c)
}

// shapeLocked: the JSON parses but has the wrong shape → PUBACK (0x83) and
// close (after DISCONNECT 0x83 on MQTT 5).
func (s *Server) shapeLocked(u *up, reason string) {
	u.p.fail(codeImplementationError)
	u.p.closeWith(codeImplementationError)
	s.closeConnLocked(u, reason)
}

// adaptorErrorLocked: the payload is not parseable JSON, or (device API) it
// cannot be converted. MQTT 5 QoS 1: PUBACK 0x99, the session stays; with
// sendAckOnValidationException and QoS 1: plain PUBACK; otherwise close
// without PUBACK (DISCONNECT 0x99 on MQTT 5).
func (s *Server) adaptorErrorLocked(u *up, reason string) {
	if (u.c.v5 || s.cfg.ackOnValidation) && u.pk.FixedHeader.Qos > 0 {
		s.rejectLocked(u.c, u.pk.TopicName, u.pk.Payload, reason+" (acknowledged)", false)
		u.p.fail(codePayloadFormatInvalid)
		return
	}
	u.p.refuse()
	u.p.closeWith(codePayloadFormatInvalid)
	s.closeConnLocked(u, reason)
}

// syntaxLocked checks that the payload parses (adaptorErrorLocked if not).
func (s *Server) syntaxLocked(u *up) bool {
	if validJSON(u.pk.Payload) {
		return true
	}
	s.adaptorErrorLocked(u, "payload is not valid JSON")
	return false
}

// convertErrorLocked: one device's data of a gateway publish cannot be
// converted. MQTT 5: PUBACK 0x99 unless decided, the session stays and the
// other devices are processed; MQTT 3.1.1: close without PUBACK. It
// reports whether processing stops.
func (s *Server) convertErrorLocked(u *up, reason string) bool {
	if u.c.v5 {
		s.rejectLocked(u.c, u.pk.TopicName, u.pk.Payload, reason, false)
		u.p.fail(codePayloadFormatInvalid)
		return false
	}
	u.p.refuse()
	s.closeConnLocked(u, reason)
	return true
}

// createFailedLocked: a sub-device cannot be looked up or created
// (asynchronously in ThingsBoard). The PUBACK carries code unless decided;
// the session stays. On MQTT 3.1.1 it looks like success.
func (s *Server) createFailedLocked(u *up, reason string, code byte) {
	s.rejectLocked(u.c, u.pk.TopicName, u.pk.Payload, reason, false)
	u.p.fail(code)
}

// syncRefusalLocked: sub-device creation refused synchronously (a rate
// limit): no PUBACK, DISCONNECT 0x8B and close.
func (s *Server) syncRefusalLocked(u *up, reason string) {
	u.p.refuse()
	u.p.closeWith(codeServerShuttingDown)
	s.closeConnLocked(u, reason)
}

// dataRefusedLocked: a device's data message of a gateway publish is
// refused (rate limited, or another transport error). Unless the PUBACK
// was decided, it carries 0x97 (0x80) and the TCP connection is closed;
// otherwise the connection stays and an MQTT 5 gateway gets the
// v1/gateway/disconnect notice for the device (WIRE §3.4). It reports
// whether processing stops.
func (s *Server) dataRefusedLocked(u *up, device, reason string, rateLimit bool) bool {
	code, notice := codeUnspecifiedError, codeUnspecifiedError
	if rateLimit {
		code, notice = codeQuotaExceeded, codeMessageRateTooHigh
	}
	if !u.p.decided {
		u.p.fail(code)
		s.closeConnLocked(u, reason)
		return true
	}
	s.rejectLocked(u.c, u.pk.TopicName, u.pk.Payload, reason, false)
	if u.c.v5 {
		var w objWriter
		w.raw("device", jsonString(device)).raw("reason", []byte(fmt.Sprint(notice)))
		u.p.after = append(u.p.after, s.publishLocked(u.c, topicDisconnect, w.bytes()))
	}
	return false
}

// selfRefusedLocked: a message on the gateway's own device topics is
// refused by its rate limit: no PUBACK, DISCONNECT 0x83 and close.
func (s *Server) selfRefusedLocked(u *up, reason string) {
	u.p.refuse()
	u.p.closeWith(codeImplementationError)
	s.closeConnLocked(u, reason)
}

// topicInvalidLocked: an unknown topic → PUBACK 0x90, the session stays.
func (s *Server) topicInvalidLocked(u *up, reason string) {
	s.rejectLocked(u.c, u.pk.TopicName, u.pk.Payload, reason, false)
	u.p.fail(codeTopicNameInvalid)
}
