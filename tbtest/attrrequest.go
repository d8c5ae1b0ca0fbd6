package tbtest

import (
	"sort"
	"strconv"
)

// Attribute requests on v1/gateway/attributes/request (WIRE §2.6) and their
// replies on v1/gateway/attributes/response (WIRE §3.2).

func (s *Server) onAttrRequest(u *up) {
	o, err := parseObject(u.pk.Payload)
	if err != nil {
		s.shapeLocked(u, "payload is not a JSON object")
		return
	}
	const what = "attribute request"
	id, bad := required(o, what, "id", "an int", asInt)
	if bad != "" {
		s.shapeLocked(u, bad)
		return
	}
	name, bad := required(o, what, "device", "a string", asString)
	if bad != "" {
		s.shapeLocked(u, bad)
		return
	}
	client, bad := required(o, what, "client", `a boolean (the documented {"client":[…],"shared":[…]} form is not supported)`, asBool)
	if bad != "" {
		s.shapeLocked(u, bad)
		return
	}
	var names []string
	if k, ok := o.get("key"); ok {
		n, err := asString(k)
		if err != nil {
			s.shapeLocked(u, "attribute request key is not a string")
			return
		}
		names = []string{n}
	} else if ks, ok := o.get("keys"); ok {
		els, err := elements(ks)
		if err != nil {
			s.shapeLocked(u, "attribute request keys is not an array")
			return
		}
		for _, e := range els {
			n, err := asString(e)
			if err != nil {
				s.shapeLocked(u, "attribute request keys holds a non-string")
				return
			}
			names = append(names, n)
		}
	} else {
		s.shapeLocked(u, "attribute request without key or keys")
		return
	}
	u.createCode = codeImplementationError // processFailure(…, IMPLEMENTATION_SPECIFIC_ERROR)
	d := s.sessionLocked(u, name, "default")
	if d == nil {
		return
	}
	if !u.c.gw.subs.message(u.now) {
		s.dataRefusedLocked(u, name, "rate limit (gateway messages): attribute request", true)
		return
	}
	payload := attributeResponse(id, name, d, client, names)
	u.p.after = append(u.p.after, s.publishLocked(u.c, topicAttrResponse, payload))
}

// attributeResponse renders the reply to an attribute request (WIRE §3.2).
func attributeResponse(id int, name string, d *device, client bool, names []string) []byte {
	multiple := len(names) > 1
	var clientList, sharedList []kv
	switch {
	case len(names) == 0: // "keys": [] → all client and all shared attributes
		clientList, sharedList = sortedKVs(d.client), sortedKVs(d.shared)
	case client:
		clientList = pickKVs(d.client, names)
	default:
		sharedList = pickKVs(d.shared, names)
	}
	top := newOrdered()
	top.set("id", []byte(strconv.Itoa(id)))
	top.set("device", jsonString(name))
	values := newOrdered()
	for _, list := range [][]kv{clientList, sharedList} {
		switch {
		case len(list) == 1 && !multiple:
			top.set("value", renderValue(list[0].val))
		case len(list) > 0:
			for _, e := range list {
				values.set(e.key, renderValue(e.val))
			}
			top.set("values", nil) // position; filled below
		}
	}
	if len(values.keys) > 0 {
		top.set("values", values.bytes())
	}
	return top.bytes()
}

func sortedKVs(m map[string]any) []kv {
	out := make([]kv, 0, len(m))
	for k, v := range m {
		out = append(out, kv{k, v})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].key < out[j].key })
	return out
}

func pickKVs(m map[string]any, names []string) []kv {
	var out []kv
	seen := map[string]bool{}
	for _, n := range names {
		if v, ok := m[n]; ok && !seen[n] {
			seen[n] = true
			out = append(out, kv{n, v})
		}
	}
	return out
}

// ordered is a JSON object under construction where setting an existing key
// replaces its value in place (Gson's JsonObject.add).
type ordered struct {
	keys []string
	vals map[string][]byte
}

func newOrdered() *ordered { return &ordered{vals: map[string][]byte{}} }

func (o *ordered) set(k string, v []byte) {
	if _, ok := o.vals[k]; !ok {
		o.keys = append(o.keys, k)
	}
	o.vals[k] = v
}

func (o *ordered) bytes() []byte {
	var w objWriter
	for _, k := range o.keys {
		w.raw(k, o.vals[k])
	}
	return w.bytes()
}
