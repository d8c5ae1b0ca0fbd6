package tbgateway

import (
	"encoding/json"
	"errors"
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/thingsgate/tbgateway/internal/jsonx"
)

// Fuzz targets for the pure decoders of what ThingsBoard sends (WIRE.md §3).
// Each checks the decoder's contract, not only the absence of panics:
// results are all-or-nothing (an error or an echo carries no data), a
// decoded message is addressed to a real device, and what the router
// dispatches agrees with an independent reading of the payload. The codec
// itself (jsonx.Decode, AppendValue, AppendString, AppendFloat) is fuzzed in
// internal/jsonx. Hostile inputs that are kept for good, including any that
// once broke an invariant, are in testdata/fuzz/<FuzzName>/.

// fuzzVectorPayloads returns the payloads of the shared downlink vectors
// published on topic (a trailing '/' matches a prefix).
func fuzzVectorPayloads(f *testing.F, topic string) []string {
	f.Helper()
	raw, err := os.ReadFile("testdata/vectors/downlink.json")
	if err != nil {
		f.Fatal(err)
	}
	var vs []struct{ Topic, Payload string }
	if err := json.Unmarshal(raw, &vs); err != nil {
		f.Fatal(err)
	}
	var out []string
	for _, v := range vs {
		if v.Topic == topic || strings.HasSuffix(topic, "/") && strings.HasPrefix(v.Topic, topic) {
			out = append(out, v.Payload)
		}
	}
	if len(out) == 0 {
		f.Fatalf("no downlink vector on %s", topic)
	}
	return out
}

// fuzzHostile are payloads every decoder must survive.
var fuzzHostile = []string{
	``, ` `, `null`, `true`, `0`, `"s"`, `[]`, `{}`, `[{}]`, `{`, `}`, `{"`, `{"device"`, `{"device":`,
	`{"device":null,"data":null}`, `{"device":"","data":{}}`, `{"device":1,"data":{}}`,
	`{"device":["A"],"data":{}}`, `{"device":{"a":1},"data":{}}`, `{"device":"A","data":[]}`,
	`{"device":"A","data":"x"}`, `{"device":"A","data":1e400}`, `{"device":"A","data":{"t":1e400}}`,
	`{"device":"A","data":{},"extra":1}`, `{"device":"A","device":"B","data":{}}`,
	`{"device":"A","data":{"k":1},"data":{"k":2}}`, `{"Device":"A","Data":{"k":1}}`,
	`{"device":"\u0000","data":{"\u0000":"\u0000"}}`, `{"device":"\ud800","data":{"k":"\udfff"}}`,
	"{\"device\":\"\xff\xfe\",\"data\":{\"\xff\":1}}", `{"device":"日本語 ☃","data":{"😀":"𝄞"}}`,
	`{"device":"A","data":{"k":1}} `, `{"device":"A","data":{"k":1}}x`, `{"device":"A","data":{"k":1}}}`,
	`{"device":"A","data":{"k":1}}{"device":"B","data":{}}`, `{"device":"A","data":{"k":NaN}}`,
	`{"device":"A","data":{"k":99999999999999999999999}}`, `{"device":"A","data":{"k":-9223372036854775809}}`,
	`{"device":"A","data":{"k":1.0E20,"l":-0.0,"m":4.9e-324}}`,
	`{"device":"A","data":` + strings.Repeat(`{"a":`, 300) + `1` + strings.Repeat(`}`, 300) + `}`,
	`{"device":"A","data":{"d":` + strings.Repeat(`[`, 10001) + strings.Repeat(`]`, 10001) + `}}`,
	`{"device":"A","data":{"deleted":[]}}`, `{"device":"A","data":{"deleted":null}}`,
	`{"device":"A","data":{"deleted":"k"}}`, `{"device":"A","data":{"deleted":["k",1]}}`,
	`{"device":"A","data":{"deleted":[null]}}`, `{"device":"A","data":{"deleted":[["k"]]}}`,
	`{"device":"A","data":{"deleted":["deleted"]}}`, `{"device":"A","data":{"deleted":["a"],"b":2}}`,
	`{"device":"A","data":{"deleted":["a","a"]}}`, `{"device":"A","data":{"deleted":["a"],"deleted":[1]}}`,
	`{"A":{"k":1}}`, `{"device":{"k":1}}`, `{"A":{"k":1},"B":{}}`, `{"device":{},"data":{}}`,
	`{"id":1,"device":"A"}`, `{"id":1,"device":""}`, `{"id":1,"device":1}`, `{"id":2147483647,"device":"A","value":1}`, `{"id":2147483648,"device":"A"}`,
	`{"id":-2147483648,"device":"A"}`, `{"id":-2147483649,"device":"A"}`, `{"id":1e3,"device":"A"}`,
	`{"id":1.0,"device":"A"}`, `{"id":"1","device":"A"}`, `{"id":null,"device":"A"}`,
	`{"id":9223372036854775808,"device":"A"}`, `{"id":1,"device":"A","values":null}`,
	`{"id":1,"device":"A","values":[1]}`, `{"id":1,"device":"A","value":null}`,
	`{"id":1,"device":"A","values":{},"value":{},"client":{"a":1},"shared":[]}`,
	`{"device":"A","data":{"id":0,"method":"m"}}`, `{"device":"A","data":{"id":-1,"method":"m"}}`,
	`{"device":"A","data":{"id":2147483648,"method":"m"}}`, `{"device":"A","data":{"id":9223372036854775808,"method":"m"}}`,
	`{"device":"A","data":{"id":1.5,"method":"m"}}`, `{"device":"A","data":{"id":1e2,"method":"m"}}`,
	`{"device":"A","data":{"id":"1","method":"m"}}`, `{"device":"A","data":{"id":null,"method":"m"}}`,
	`{"device":"A","data":{"id":1,"method":""}}`, `{"device":"A","data":{"id":1,"method":1}}`,
	`{"device":"A","data":{"id":1,"method":null}}`, `{"device":"A","data":{"id":1}}`,
	`{"device":"A","data":{"id":1,"method":"m","params":null}}`, `{"device":"A","data":{"id":1,"method":"m","params":[1,{"a":null}]}}`,
	`{"device":"A","data":{"id":1,"method":"m","params":"x"}}`, `{"device":"A","data":null}`,
	`{"device":"A","id":1,"data":{"success":true}}`, `{"device":"A","id":null,"data":{}}`, `{"id":1}`,
	`{"DEVICE":"A","DATA":{"ID":1,"METHOD":"m"}}`, `{"device":"A","Id":1,"data":{"id":1,"method":"m"}}`,
	`{"method":"m"}`, `{"method":"m","params":{}}`, `{"method":""}`, `{"method":1}`, `{"method":"m","params":}`,
	`{"error":"boom"}`, `{"error":""}`, `{"error":null}`, `{"error":1}`, `{"error":{"a":1}}`,
	`{"error":"a","error":"b"}`, `{"error":"a","x":1}`, `{"Error":"a"}`, `{"error":"\u0000\ud800"}`,
	`{"error":"a"}x`, `{"error":"a"} `, `["error"]`,
}

func fuzzAdd(f *testing.F, vectorTopic string) {
	for _, p := range fuzzVectorPayloads(f, vectorTopic) {
		f.Add([]byte(p))
	}
	for _, p := range fuzzHostile {
		f.Add([]byte(p))
	}
}

// fuzzTop is the reference reading of a downlink: exactly one JSON object
// (encoding/json's Unmarshal refuses trailing data), members by exact name.
func fuzzTop(payload []byte) (map[string]json.RawMessage, bool) {
	var m map[string]json.RawMessage
	if json.Unmarshal(payload, &m) != nil || m == nil {
		return nil, false
	}
	return m, true
}

func fuzzString(raw json.RawMessage) (string, bool) {
	var s string
	if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}

func FuzzDecodeAttributeUpdate(f *testing.F) {
	fuzzAdd(f, topicGatewayAttributes)
	f.Fuzz(func(t *testing.T, payload []byte) {
		u, echo, err := decodeAttributeUpdate(payload)
		zero := u.Device == "" && u.Values == nil && u.Deleted == nil
		if echo || err != nil {
			if echo && err != nil {
				t.Fatalf("%q: both echo and error %v", payload, err)
			}
			if !zero {
				t.Fatalf("%q: echo=%v err=%v but a result %+v", payload, echo, err, u)
			}
			return
		}
		if !json.Valid(payload) {
			t.Fatalf("%q is not JSON but decoded as %+v", payload, u)
		}
		// An update for "" would reach the handler of the gateway's own
		// attributes (GatewayDevice.OnAttributeUpdate).
		if u.Device == "" {
			t.Fatalf("%q: update without a device name: %+v", payload, u)
		}
		if u.Values != nil && len(u.Values) == 0 {
			t.Fatalf("%q: Values empty but not nil", payload)
		}
		if u.Deleted != nil && len(u.Deleted) == 0 {
			t.Fatalf("%q: Deleted empty but not nil (documented: nil when none)", payload)
		}
		if _, ok := u.Values[attributeUpdateDeletedField]; ok && u.Deleted != nil {
			t.Fatalf("%q: %q is both a deletion list and a value: %+v", payload, attributeUpdateDeletedField, u)
		}
		// Independent reading: {"device":D,"data":{...}} and nothing else.
		top, ok := fuzzTop(payload)
		if !ok || len(top) != 2 {
			t.Fatalf("%q: decoded %+v from something that is not a two-member object", payload, u)
		}
		if d, ok := fuzzString(top["device"]); !ok || d != u.Device {
			t.Fatalf("%q: device decoded as %q, payload has %s", payload, u.Device, top["device"])
		}
		var data map[string]json.RawMessage
		if json.Unmarshal(top["data"], &data) != nil || data == nil {
			t.Fatalf("%q: data is not an object but decoded as %+v", payload, u)
		}
		for k := range data {
			_, isValue := u.Values[k]
			if !isValue && !(k == attributeUpdateDeletedField && u.Deleted != nil) {
				t.Fatalf("%q: member %q of data lost: %+v", payload, k, u)
			}
		}
		if len(u.Values) > len(data) {
			t.Fatalf("%q: more values than data members: %+v", payload, u)
		}
		if u.Deleted != nil {
			var names []string
			if json.Unmarshal(data[attributeUpdateDeletedField], &names) != nil || !reflect.DeepEqual(names, u.Deleted) {
				t.Fatalf("%q: Deleted %q does not match %s", payload, u.Deleted, data[attributeUpdateDeletedField])
			}
		}
		// A value that is a list of names would have been a deletion.
		if del, ok := u.Values[attributeUpdateDeletedField].([]any); ok && len(del) > 0 && allStrings(del) {
			t.Fatalf("%q: deletion list kept as a value: %+v", payload, u)
		}
		// What the gateway would publish itself for these values, which a
		// plain broker hands back on the same topic, must read as an echo
		// and not as an update.
		if len(u.Values) > 0 {
			var s jsonx.Scratch
			own := append(jsonx.AppendString([]byte{'{'}, u.Device), ':')
			if own, err = jsonx.AppendValue(own, map[string]any(u.Values), &s); err == nil {
				own = append(own, '}')
				if _, echo, _ := decodeAttributeUpdate(own); !echo {
					t.Fatalf("our own uplink %q for %+v is not recognised as an echo", own, u)
				}
			}
		}
	})
}

func allStrings(a []any) bool {
	for _, e := range a {
		if _, ok := e.(string); !ok {
			return false
		}
	}
	return true
}

func FuzzDecodeAttributeResponse(f *testing.F) {
	fuzzAdd(f, topicGatewayAttrResponse)
	f.Fuzz(func(t *testing.T, payload []byte) {
		key, r, err := decodeAttributeResponse(payload)
		if err != nil {
			if key != (attrKey{}) {
				t.Fatalf("%q: error %v with key %+v", payload, err, key)
			}
			return
		}
		if !json.Valid(payload) {
			t.Fatalf("%q is not JSON but decoded as %+v %+v", payload, key, r)
		}
		if key.device == "" {
			t.Fatalf("%q: response without a device name", payload)
		}
		top, ok := fuzzTop(payload)
		if !ok {
			t.Fatalf("%q: decoded from something that is not an object", payload)
		}
		if d, ok := fuzzString(top["device"]); !ok || d != key.device {
			t.Fatalf("%q: device decoded as %q, payload has %s", payload, key.device, top["device"])
		}
		// The id is an int32 written as an integer literal, as the server
		// reads ids (getAsInt) and the SDK sends them.
		id, err := strconv.ParseInt(string(top["id"]), 10, 32)
		if err != nil || int32(id) != key.id {
			t.Fatalf("%q: id decoded as %d, payload has %s (%v)", payload, key.id, top["id"], err)
		}
		if _, has := top["value"]; has != r.hasValue {
			t.Fatalf("%q: hasValue=%v", payload, r.hasValue)
		}
		if raw, has := top["values"]; has != (r.values != nil) {
			t.Fatalf("%q: values %s decoded as %#v", payload, raw, r.values)
		}
		if !r.hasValue && r.value != nil {
			t.Fatalf("%q: a value without hasValue", payload)
		}
	})
}

func FuzzDecodeRPCRequest(f *testing.F) {
	fuzzAdd(f, topicGatewayRPC)
	f.Fuzz(func(t *testing.T, payload []byte) {
		req, echo, err := decodeRPCRequest(payload)
		if echo || err != nil {
			if echo && err != nil {
				t.Fatalf("%q: both echo and error %v", payload, err)
			}
			if req != nil {
				t.Fatalf("%q: echo=%v err=%v but a request %+v", payload, echo, err, req)
			}
			return
		}
		if req == nil {
			t.Fatalf("%q: no request, no echo, no error", payload)
		}
		if !json.Valid(payload) {
			t.Fatalf("%q is not JSON but decoded as %+v", payload, req)
		}
		if req.Device == "" || req.Method == "" {
			t.Fatalf("%q: request without device or method: %+v", payload, req)
		}
		if req.Params != nil && !json.Valid(req.Params) {
			t.Fatalf("%q: params %q are not JSON", payload, req.Params)
		}
		// The reply the SDK sends for it, {"device":D,"id":N,"data":...},
		// addresses the same request, and is an echo when a plain broker
		// hands it back.
		b := jsonx.AppendString([]byte(`{"device":`), req.Device)
		b = append(b, `,"id":`...)
		b = strconv.AppendInt(b, int64(req.ID), 10)
		b = append(b, `,"data":{"success":true}}`...)
		var reply struct {
			Device string `json:"device"`
			ID     int    `json:"id"`
		}
		if err := json.Unmarshal(b, &reply); err != nil || reply.Device != req.Device || reply.ID != req.ID {
			t.Fatalf("%q: reply %q does not address device %q id %d (%v)", payload, b, req.Device, req.ID, err)
		}
		if again, echo, err := decodeRPCRequest(b); !echo || again != nil || err != nil {
			t.Fatalf("our own reply %q is not recognised as an echo (%+v, %v)", b, again, err)
		}
	})
}

func FuzzDecodeSelfRPCRequest(f *testing.F) {
	for _, p := range fuzzVectorPayloads(f, topicSelfRPCRequestPrefix) {
		f.Add("42", []byte(p))
	}
	for _, id := range []string{"0", "1", "2147483647", "2147483648", "-1", "-2147483649", "9223372036854775807",
		"9223372036854775808", "", " 1", "1 ", "+1", "01", "0x10", "1e3", "1.0", "١", "\x00", "abc", "+"} {
		f.Add(id, []byte(`{"method":"reboot","params":{}}`))
	}
	for _, p := range fuzzHostile {
		f.Add("7", []byte(p))
	}
	f.Fuzz(func(t *testing.T, idText string, payload []byte) {
		req, err := decodeSelfRPCRequest(idText, payload)
		if err != nil {
			if req != nil {
				t.Fatalf("(%q, %q): error %v with a request %+v", idText, payload, err, req)
			}
			return
		}
		if req == nil {
			t.Fatalf("(%q, %q): no request and no error", idText, payload)
		}
		if !json.Valid(payload) {
			t.Fatalf("%q is not JSON but decoded as %+v", payload, req)
		}
		if req.Device != "" || req.Method == "" {
			t.Fatalf("(%q, %q): request %+v: want the gateway itself and a method", idText, payload, req)
		}
		if req.Params != nil && !json.Valid(req.Params) {
			t.Fatalf("(%q, %q): params %q are not JSON", idText, payload, req.Params)
		}
		// The id is the topic's, as a decimal number.
		if id, err := strconv.ParseInt(idText, 10, 64); err != nil || int64(req.ID) != id {
			t.Fatalf("(%q, %q): id decoded as %d (%v)", idText, payload, req.ID, err)
		}
		top, ok := fuzzTop(payload)
		if !ok {
			t.Fatalf("%q: decoded from something that is not an object", payload)
		}
		// encoding/json matches member names case-insensitively, last one
		// winning; compare only when "method" is unambiguous.
		folded := 0
		for k := range top {
			if strings.EqualFold(k, "method") {
				folded++
			}
		}
		if m, ok := fuzzString(top["method"]); ok && folded == 1 && m != req.Method {
			t.Fatalf("(%q, %q): method decoded as %q, payload has %s", idText, payload, req.Method, top["method"])
		}
	})
}

func FuzzRPCErrorOf(f *testing.F) {
	f.Add([]byte(`{"maxPayloadSize":65536,"maxInflightMessages":100}`))
	for _, p := range fuzzHostile {
		f.Add([]byte(p))
	}
	f.Fuzz(func(t *testing.T, reply []byte) {
		msg, ok := rpcErrorOf(reply)
		// Reference: a JSON object whose only member is "error" holding a
		// string.
		top, isObj := fuzzTop(reply)
		want, isErr := fuzzString(top["error"])
		isErr = isErr && isObj && len(top) == 1
		if !isErr {
			want = ""
		}
		if ok != isErr || msg != want {
			t.Fatalf("rpcErrorOf(%q) = %q, %v; want %q, %v", reply, msg, ok, want, isErr)
		}
		if !ok && msg != "" {
			t.Fatalf("rpcErrorOf(%q) = %q without ok", reply, msg)
		}
	})
}

// FuzzPointsMatchValues: an entry of Points and the entry of the same data
// in Values are refused for the same reason or sent as the same JSON, with
// integers and floats kept apart.
func FuzzPointsMatchValues(f *testing.F) {
	f.Add("t", "n", 21.5, int64(7), "s", "on", true)
	f.Add("", "n", 1.0, int64(0), "s", "", false)
	f.Add("a\u2028", "\xff", 1e300, int64(-1), "x\"", "\x00", true)
	f.Fuzz(func(t *testing.T, kf, ki string, fv float64, iv int64, ks, sv string, bv bool) {
		if kf == ki || kf == ks || ki == ks || ks+"?" == kf || ks+"?" == ki {
			t.Skip("the same key twice has no Values form")
		}
		kb := ks + "?"
		points := []Point{Float64(kf, fv), Int64(ki, iv), String(ks, sv), Bool(kb, bv)}
		values := Values{kf: fv, ki: iv, ks: sv, kb: bv}
		enc := func(en Entry) (string, error) {
			return encodeWith(func(e *encoder) error { return e.deviceTelemetry("D", []Entry{en}) })
		}
		p, perr := enc(Entry{TS: 1, Points: points})
		v, verr := enc(Entry{TS: 1, Values: values})
		if (perr == nil) != (verr == nil) {
			t.Fatalf("points: %v, values: %v", perr, verr)
		}
		if perr != nil {
			// Which fault is found first may differ (Values are checked in
			// key order), not the kind of fault.
			for _, err := range []error{perr, verr} {
				if !errors.Is(err, ErrInvalidKey) && !errors.Is(err, ErrInvalidValue) {
					t.Fatalf("points: %v, values: %v", perr, verr)
				}
			}
			return
		}
		pd, err := jsonx.Decode([]byte(p))
		if err != nil {
			t.Fatalf("points sent invalid JSON %q: %v", p, err)
		}
		vd, err := jsonx.Decode([]byte(v))
		if err != nil {
			t.Fatalf("values sent invalid JSON %q: %v", v, err)
		}
		if !reflect.DeepEqual(pd, vd) {
			t.Fatalf("points %s, values %s", p, v)
		}
	})
}
