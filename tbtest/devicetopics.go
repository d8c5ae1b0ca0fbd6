package tbtest

import (
	"encoding/json"
	"strconv"
	"strings"
)

// Uplinks of the gateway acting as a plain device on v1/devices/me/* (its
// own telemetry, attributes, attribute requests, client-side RPCs such as
// getSessionLimits, answers to server RPCs, claims). They count against the
// gateway-device rate-limit bucket, and a breach closes the connection
// without PUBACK (WIRE §5.2). A payload that cannot be parsed or converted
// is an adaptor error (WIRE §2.2 first row).

// selfLimitLocked consumes the gateway-device bucket; over the limit the
// connection is closed without PUBACK (DISCONNECT 0x83 on MQTT 5, WIRE §5.2).
func (s *Server) selfLimitLocked(u *up, data bool, points int) bool {
	b := u.c.gw.own
	ok := false
	if data {
		ok = b.data(points, u.now)
	} else {
		ok = b.message(u.now)
	}
	if !ok {
		s.selfRefusedLocked(u, "rate limit (gateway device): "+u.pk.TopicName)
	}
	return ok
}

// selfSubscription reports a device-API subscription that ThingsBoard
// turns into an attribute or RPC subscription message (a regular message of
// the gateway-device bucket), and for an attribute subscription the topic
// its updates are published on ("" for the protobuf form, unsupported).
func selfSubscription(filter string) (counted bool, attrTopic string) {
	switch filter {
	case topicSelfAttributes, topicShortAttributes, topicShortAttributesJSON:
		return true, filter
	case "v2/a/p":
		return true, ""
	case topicSelfRPCRequestSub, "v2/r/req/+", "v2/r/req/j/+", "v2/r/req/p/+":
		return true, ""
	}
	return false, ""
}

// resetAttrTopic picks the attribute topic after an unsubscribe.
func (c *conn) resetAttrTopic() {
	c.attrTopic = ""
	for _, f := range []string{topicSelfAttributes, topicShortAttributes, topicShortAttributesJSON} {
		if _, ok := c.subs[f]; ok {
			c.attrTopic = f
			return
		}
	}
}

// topicID parses the request id that ends a device-API topic.
func (s *Server) topicID(u *up, prefix string) (int, bool) {
	id, err := strconv.Atoi(strings.TrimPrefix(u.pk.TopicName, prefix))
	if err != nil {
		s.adaptorErrorLocked(u, "request id in topic is not an integer")
		return 0, false
	}
	return id, true
}

func (s *Server) onSelfTelemetry(u *up) {
	if !s.syntaxLocked(u) {
		return
	}
	var items []json.RawMessage
	switch jsonKind(u.pk.Payload) {
	case '{':
		items = []json.RawMessage{json.RawMessage(u.pk.Payload)}
	case '[':
		items, _ = elements(u.pk.Payload)
	default:
		s.adaptorErrorLocked(u, "telemetry is neither a JSON object nor an array")
		return
	}
	pts, n, err := convertTelemetry(items, u.nowMs())
	if err != nil {
		s.adaptorErrorLocked(u, "telemetry: "+err.Error())
		return
	}
	if !s.selfLimitLocked(u, true, n) {
		return
	}
	storeTelemetry(u.c.gw.dev, pts)
	u.p.points += len(pts)
}

func (s *Server) onSelfAttributes(u *up) {
	if !s.syntaxLocked(u) {
		return
	}
	list, err := members(u.pk.Payload)
	if err != nil {
		s.adaptorErrorLocked(u, "attributes are not a JSON object")
		return
	}
	kvs, err := rawToKVs(list)
	if err != nil {
		s.adaptorErrorLocked(u, "attributes: "+err.Error())
		return
	}
	if !s.selfLimitLocked(u, true, len(kvs)) {
		return
	}
	for _, kv := range kvs {
		u.c.gw.dev.client[kv.key] = kv.val
	}
	u.p.attributes += len(kvs)
}

func (s *Server) onSelfAttrRequest(u *up) {
	id, ok := s.topicID(u, topicSelfAttrRequestPrefix)
	if !ok || !s.syntaxLocked(u) {
		return
	}
	o, err := parseObject(u.pk.Payload)
	if err != nil {
		s.adaptorErrorLocked(u, "attribute request is not a JSON object")
		return
	}
	keys := func(name string) ([]string, bool, error) {
		v, ok := o.get(name)
		if !ok || jsonKind(v) == 'n' {
			return nil, false, nil
		}
		str, err := asString(v)
		if err != nil {
			return nil, true, err
		}
		var out []string
		for _, k := range strings.Split(str, ",") {
			if k = strings.TrimSpace(k); k != "" {
				out = append(out, k)
			}
		}
		return out, true, nil
	}
	ck, hasC, err1 := keys("clientKeys")
	sk, hasS, err2 := keys("sharedKeys")
	if err1 != nil || err2 != nil {
		s.adaptorErrorLocked(u, "clientKeys/sharedKeys must be comma-separated strings")
		return
	}
	if !s.selfLimitLocked(u, false, 0) {
		return
	}
	d := u.c.gw.dev
	var cl, sh []kv
	switch {
	case !hasC && !hasS:
		cl, sh = sortedKVs(d.client), sortedKVs(d.shared)
	default:
		if hasC {
			cl = pickKVs(d.client, ck)
		}
		if hasS {
			sh = pickKVs(d.shared, sk)
		}
	}
	var w objWriter
	for _, part := range []struct {
		name string
		list []kv
	}{{"client", cl}, {"shared", sh}} {
		if len(part.list) == 0 {
			continue
		}
		var inner objWriter
		for _, e := range part.list {
			inner.value(e.key, e.val)
		}
		w.raw(part.name, inner.bytes())
	}
	topic := topicSelfAttrResponsePrefix + strconv.Itoa(id)
	u.p.after = append(u.p.after, s.publishLocked(u.c, topic, w.bytes()))
}

func (s *Server) onSelfRPCRequest(u *up) {
	id, ok := s.topicID(u, topicSelfRPCRequestPrefix)
	if !ok || !s.syntaxLocked(u) {
		return
	}
	o, err := parseObject(u.pk.Payload)
	if err != nil {
		s.adaptorErrorLocked(u, "RPC request is not a JSON object")
		return
	}
	method := ""
	if m, ok := o.get("method"); ok {
		method, _ = asString(m)
	}
	if method == "getSessionLimits" {
		// Answered by the transport itself; never rate limited.
		topic := topicSelfRPCResponsePrefix + strconv.Itoa(id)
		u.p.after = append(u.p.after, s.publishLocked(u.c, topic, sessionLimitsJSON(s.sessionLimits)))
		return
	}
	// Other client-side RPCs go to the rule engine, which does not answer by default.
	s.selfLimitLocked(u, false, 0)
}

func (s *Server) onSelfRPCResponse(u *up) {
	id, ok := s.topicID(u, topicSelfRPCResponsePrefix)
	if !ok || !s.selfLimitLocked(u, false, 0) {
		return
	}
	key := rpcKey{device: u.c.token, id: id}
	if ch := s.pendingOwn[key]; ch != nil {
		delete(s.pendingOwn, key)
		ch <- json.RawMessage(cloneBytes(u.pk.Payload))
	}
}

func (s *Server) onSelfClaim(u *up) {
	if !s.syntaxLocked(u) {
		return
	}
	cl, err := claimOf(u.pk.Payload)
	if err != nil {
		s.adaptorErrorLocked(u, "claim: "+err.Error())
		return
	}
	if !s.selfLimitLocked(u, false, 0) {
		return
	}
	u.c.gw.dev.claims = append(u.c.gw.dev.claims, cl)
	u.p.claims++
}
