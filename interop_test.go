package tbgateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	tb "github.com/thingsgate/tbgateway"
	"github.com/thingsgate/tbgateway/internal/jsonx"
	"github.com/thingsgate/tbgateway/internal/testbroker"
	"github.com/thingsgate/tbgateway/tbtest"
)

// Interoperability: every uplink and downlink of the spec's vectors
// through a plain broker (the embedded mochi, or the Mosquitto named by
// TBGATEWAY_TEST_BROKER), which also hands the gateway its own publishes
// back, and every public call against the fake ThingsBoard, which closes
// the connection on whatever the real server rejects.

// TestWireUplinks drives every uplink through the public API and a real
// broker and compares what arrives with the spec's vectors.
func TestWireUplinks(t *testing.T) {
	b := testbroker.Start(t)
	obs := b.Observe(t, "v1/#")
	pub := b.Publisher(t)
	g := dial(t, b)
	ctx := ctxT(t)
	vs := vectors(t, "uplink.json")
	last := func(topic string, n int) []byte {
		msgs := obs.Wait(t, topic, n, wait)
		return msgs[n-1].Payload
	}
	counts := map[string]int{}
	check := func(name string) {
		t.Helper()
		v := vs[name]
		counts[v.Topic]++
		sameJSON(t, v.Payload, last(v.Topic, counts[v.Topic]))
	}

	devA, err := g.Connect(ctx, "Device A")
	require.NoError(t, err)
	check("connect-default-profile")
	_, err = g.Connect(ctx, "Device A", tb.WithDeviceProfile("Sensor A"))
	require.NoError(t, err)
	check("connect-with-profile")
	assert.Equal(t, "Sensor A", devA.Profile())
	assert.Equal(t, []tb.DeviceInfo{{Name: "Device A", Profile: "Sensor A"}}, g.Devices())

	v := tb.Values{"attribute1": "value1", "attribute2": 42}
	require.NoError(t, g.PublishAttributes(ctx, tb.Attributes{"Device A": v, "Device B": v}))
	check("attributes-two-devices")
	require.NoError(t, devA.PublishAttributes(ctx, tb.Values{"fw_version": "1.0", "battery": 87}))
	check("attributes-doc-example")

	require.NoError(t, g.PublishTelemetry(ctx, tb.Telemetry{
		"Device A": {
			tb.At(time.UnixMilli(1483228800000), tb.Values{"temperature": 42, "humidity": 80}),
			tb.At(time.UnixMilli(1483228801000), tb.Values{"temperature": 43, "humidity": 82}),
		},
		"Device B": {tb.At(time.UnixMilli(1483228800000), tb.Values{"temperature": 42, "humidity": 80})},
	}))
	check("telemetry-two-devices")
	require.NoError(t, devA.PublishTelemetry(ctx, tb.Entry{TS: 1700000000000, Values: tb.Values{"temperature": 23.5, "humidity": 61}}))
	check("telemetry-doc-example")
	all := tb.Values{"key1": "value1", "key2": true, "key3": 3.0, "key4": 4,
		"key5": map[string]any{"someNumber": 42, "someArray": []any{1, 2, 3}, "someNestedObject": map[string]any{"key": "value"}}}
	require.NoError(t, devA.PublishTelemetry(ctx, tb.Entry{TS: 10000, Values: all}, tb.Entry{TS: 20000, Values: all}))
	check("telemetry-all-value-types")
	// The same messages from Points: the same bytes on the wire.
	require.NoError(t, devA.PublishTelemetry(ctx, tb.Entry{TS: 1700000000000, Points: []tb.Point{tb.Float64("temperature", 23.5), tb.Int("humidity", 61)}}))
	check("telemetry-doc-example")
	points := []tb.Point{tb.String("key1", "value1"), tb.Bool("key2", true), tb.Float64("key3", 3), tb.Int64("key4", 4), tb.Any("key5", all["key5"])}
	require.NoError(t, devA.PublishTelemetry(ctx, tb.Entry{TS: 10000, Points: points}, tb.Entry{TS: 20000, Points: points}))
	check("telemetry-all-value-types")
	require.NoError(t, devA.PublishTelemetry(ctx, tb.Entry{TS: 1700000000000, Values: tb.Values{"temperature": 21},
		Metadata: &tb.Metadata{Connector: "modbus", ReceivedAt: time.UnixMilli(1700000000000), PublishedAt: time.UnixMilli(1700000000005)}}))
	check("telemetry-with-metadata")

	// Attribute requests: the broker plays the server's reply.
	done := make(chan tb.AttributeValues, 1)
	go func() {
		r, err := devA.RequestAttributes(ctx, tb.AttributeKeys{Client: []string{"attr1"}})
		assert.NoError(t, err)
		done <- r
	}()
	check("attribute-request-client-one-key")
	pub.Publish(t, "v1/gateway/attributes/response", `{"id":1,"device":"Device A","value":"value1"}`)
	assert.Equal(t, tb.Values{"attr1": "value1"}, (<-done).Client)
	go func() {
		r, err := devA.RequestAttributes(ctx, tb.AttributeKeys{Shared: []string{"key3", "key4"}})
		assert.NoError(t, err)
		done <- r
	}()
	check("attribute-request-shared-keys")
	pub.Publish(t, "v1/gateway/attributes/response", `{"id":2,"device":"Device A","values":{"key3":1.5}}`)
	assert.Equal(t, tb.AttributeValues{Client: tb.Values{}, Shared: tb.Values{"key3": 1.5}}, <-done)

	devA.OnRPC(tb.RPCHandlerFunc(func(ctx context.Context, r *tb.RPCRequest) (any, error) { return nil, nil }))
	pub.Publish(t, "v1/gateway/rpc", `{"device":"Device A","data":{"id":0,"method":"m","params":{}}}`)
	sameJSON(t, vs["rpc-reply"].Payload, rpcReply(t, obs, "Device A", 0))

	require.NoError(t, g.Claim(ctx, map[string]tb.ClaimRequest{
		"Device A": {SecretKey: "value_A", Duration: time.Minute},
		"Device B": {SecretKey: "value_B", Duration: time.Minute},
	}))
	check("claim-two-devices")
	require.NoError(t, devA.Claim(ctx, tb.ClaimRequest{}))
	check("claim-defaults")

	require.NoError(t, g.Self().PublishTelemetry(ctx, tb.Entry{Values: tb.Values{"cpu": 12.5}}))
	check("self-telemetry")

	// Own attribute request and getSessionLimits: ids come from the
	// gateway's counter, so match the topic by prefix.
	selfReq := func(prefix string, call func(), reply func(id string)) []byte {
		before := len(obs.Messages(""))
		go call()
		var m testbroker.Message
		require.Eventually(t, func() bool {
			for _, x := range obs.Messages("")[before:] {
				if strings.HasPrefix(x.Topic, prefix) {
					m = x
					return true
				}
			}
			return false
		}, wait, 5*time.Millisecond)
		reply(strings.TrimPrefix(m.Topic, prefix))
		return m.Payload
	}
	attrDone := make(chan tb.AttributeValues, 1)
	p := selfReq("v1/devices/me/attributes/request/", func() {
		r, err := g.Self().RequestAttributes(ctx, tb.AttributeKeys{Client: []string{"a", "b"}, Shared: []string{"c"}})
		assert.NoError(t, err)
		attrDone <- r
	}, func(id string) {
		pub.Publish(t, "v1/devices/me/attributes/response/"+id, `{"client":{"a":1,"b":"x"},"shared":{"c":true}}`)
	})
	sameJSON(t, vs["self-attribute-request"].Payload, p)
	assert.Equal(t, tb.AttributeValues{Client: tb.Values{"a": int64(1), "b": "x"}, Shared: tb.Values{"c": true}}, <-attrDone)

	limDone := make(chan tb.SessionLimits, 1)
	p = selfReq("v1/devices/me/rpc/request/", func() {
		l, err := g.Self().SessionLimits(ctx)
		assert.NoError(t, err)
		limDone <- l
	}, func(id string) {
		pub.Publish(t, "v1/devices/me/rpc/response/"+id, vectors(t, "downlink.json")["self-session-limits-reply"].Payload)
	})
	sameJSON(t, vs["self-session-limits"].Payload, p)
	assert.Equal(t, tb.SessionLimits{MaxPayloadSize: 65536, MaxInflightMessages: 100,
		RateLimits:        tb.RateLimits{Messages: "20:600", TelemetryMessages: "10:600", TelemetryDataPoints: "40:600"},
		GatewayRateLimits: tb.RateLimits{Messages: "100:600", TelemetryMessages: "50:600", TelemetryDataPoints: "200:600"}}, <-limDone)

	require.NoError(t, g.Disconnect(ctx, "Device A"))
	check("disconnect")
	assert.Empty(t, g.Devices())

	st := g.Stats()
	assert.Zero(t, st.Malformed, "own publishes echoed by the broker must not count as malformed")
	assert.Zero(t, st.PublishErrors)
}

// TestWireDownlinks publishes every downlink vector as the server would and
// checks what the handlers receive.
func TestWireDownlinks(t *testing.T) {
	b := testbroker.Start(t)
	obs := b.Observe(t, "v1/#")
	pub := b.Publisher(t)
	g := dial(t, b)
	ctx := ctxT(t)
	vs := vectors(t, "downlink.json")

	updates := make(chan tb.AttributeUpdate, 10)
	g.OnAttributeUpdate(tb.AttributeHandlerFunc(func(_ context.Context, u tb.AttributeUpdate) { updates <- u }))
	send := func(name string) { pub.Publish(t, vs[name].Topic, vs[name].Payload) }

	send("shared-attribute-update")
	assert.Equal(t, tb.AttributeUpdate{Device: "Device A", Values: tb.Values{"attribute1": "value1", "attribute2": int64(42)}}, <-updates)
	send("shared-attribute-update-types")
	u := <-updates
	assert.Equal(t, 42.0, u.Values["sharedDbl"])
	assert.Equal(t, int64(73), u.Values["sharedLong"])
	assert.Equal(t, map[string]any{"someNumber": int64(42), "someArray": []any{int64(1), int64(2), int64(3)}, "someNestedObject": map[string]any{"key": "value"}}, u.Values["sharedJson"])
	send("shared-attribute-deleted")
	assert.Equal(t, tb.AttributeUpdate{Device: "Dev", Deleted: []string{"sharedJson"}}, <-updates)

	// Per-device handlers take precedence over the gateway-wide one.
	devUpdates := make(chan tb.AttributeUpdate, 1)
	g.Device("Dev").OnAttributeUpdate(tb.AttributeHandlerFunc(func(_ context.Context, u tb.AttributeUpdate) { devUpdates <- u }))
	send("shared-attribute-deleted")
	assert.Equal(t, []string{"sharedJson"}, (<-devUpdates).Deleted)

	// Attribute responses: value, values, partial, nothing found.
	devA := g.Device("Device A")
	respond := func(keys tb.AttributeKeys, name string) tb.AttributeValues {
		t.Helper()
		before := len(obs.Messages("v1/gateway/attributes/request"))
		res := make(chan tb.AttributeValues, 1)
		go func() {
			r, err := devA.RequestAttributes(ctx, keys)
			assert.NoError(t, err)
			res <- r
		}()
		req := obs.Wait(t, "v1/gateway/attributes/request", before+1, wait)[before]
		var body struct{ ID int }
		require.NoError(t, json.Unmarshal(req.Payload, &body))
		m, err := jsonx.DecodeObject([]byte(vs[name].Payload))
		require.NoError(t, err)
		m["id"] = body.ID
		raw, _ := json.Marshal(m)
		pub.Publish(t, vs[name].Topic, string(raw))
		return <-res
	}
	assert.Equal(t, tb.Values{"attr9": "value1"}, respond(tb.AttributeKeys{Shared: []string{"attr9"}}, "attribute-response-single-value").Shared)
	assert.Equal(t, tb.Values{"attr1": "value1", "attr2": true}, respond(tb.AttributeKeys{Client: []string{"attr1", "attr2"}}, "attribute-response-values").Client)
	assert.Equal(t, tb.Values{"attr1": "value1"}, respond(tb.AttributeKeys{Client: []string{"attr1", "undefined"}}, "attribute-response-partial").Client)
	assert.Equal(t, tb.AttributeValues{Client: tb.Values{}, Shared: tb.Values{}}, respond(tb.AttributeKeys{Client: []string{"x"}}, "attribute-response-nothing-found"))

	// RPC to devices: id 0 first, any params, reply built from the result.
	reqs := make(chan *tb.RPCRequest, 4)
	g.OnRPC(tb.RPCHandlerFunc(func(_ context.Context, r *tb.RPCRequest) (any, error) {
		reqs <- r
		return map[string]any{"ok": r.Method}, nil
	}))
	send("rpc-request")
	r := <-reqs
	assert.Equal(t, "Device A", r.Device)
	assert.Equal(t, 0, r.ID)
	assert.Equal(t, "toggle_gpio", r.Method)
	var params struct{ Pin int }
	require.NoError(t, r.Bind(&params))
	assert.Equal(t, 1, params.Pin)
	sameJSON(t, `{"device":"Device A","id":0,"data":{"ok":"toggle_gpio"}}`, rpcReply(t, obs, "Device A", 0))
	send("rpc-request-primitive-params")
	r = <-reqs
	assert.Equal(t, json.RawMessage("true"), r.Params)
	assert.Equal(t, 5, r.ID)
	sameJSON(t, `{"device":"Dev","id":5,"data":{"ok":"getValue"}}`, rpcReply(t, obs, "Dev", 5))

	// A mux routes by method, and errors become error objects.
	mux := tb.NewRPCMux()
	mux.HandleFunc("fail", func(context.Context, *tb.RPCRequest) (any, error) {
		return nil, errors.New("no such pin")
	})
	g.Device("X").OnRPC(mux)
	pub.Publish(t, "v1/gateway/rpc", `{"device":"X","data":{"id":3,"method":"fail"}}`)
	sameJSON(t, `{"device":"X","id":3,"data":{"error":"no such pin"}}`, rpcReply(t, obs, "X", 3))

	// RPCs to the gateway itself.
	self := make(chan *tb.RPCRequest, 4)
	g.Self().OnRPC(tb.RPCHandlerFunc(func(_ context.Context, r *tb.RPCRequest) (any, error) {
		self <- r
		return "done", nil
	}))
	for _, name := range []string{"self-rpc-device-renamed", "self-rpc-device-deleted", "self-rpc"} {
		send(name)
		r := <-self
		assert.Equal(t, "", r.Device)
		id := strings.TrimPrefix(vs[name].Topic, "v1/devices/me/rpc/request/")
		assert.Equal(t, id, strconv.Itoa(r.ID))
		m := obs.Wait(t, "v1/devices/me/rpc/response/"+id, 1, wait)[0]
		assert.Equal(t, `"done"`, string(m.Payload))
	}
	pub.Publish(t, "v1/devices/me/rpc/request/44", `{"method":"gateway_device_deleted","params":"Device B"}`)
	select {
	case r := <-self:
		assert.Equal(t, "gateway_device_deleted", r.Method)
	case <-time.After(wait):
		t.Fatal("no RPC")
	}

	selfUpd := make(chan tb.AttributeUpdate, 1)
	g.Self().OnAttributeUpdate(tb.AttributeHandlerFunc(func(_ context.Context, u tb.AttributeUpdate) { selfUpd <- u }))
	send("self-shared-update")
	assert.Equal(t, tb.AttributeUpdate{Values: tb.Values{"pollPeriod": int64(5000)}}, <-selfUpd)
	// The gateway's own attribute publish comes back from a plain broker on
	// the same topic; it must not look like a server update.
	require.NoError(t, g.Self().PublishAttributes(ctx, tb.Values{"pollPeriod": 1}))
	send("subdevice-dropped-mqtt5")
	send("self-session-limits-unset") // a reply nobody waits for is dropped
	send("self-attribute-response")
	require.Eventually(t, func() bool { return g.Stats().Received >= 20 }, wait, 5*time.Millisecond)
	// The marker barrier: a real update published after the echo. The
	// gateway handles received messages in order and runs update
	// handlers in order, so the first update after the echo must be the
	// marker.
	pub.Publish(t, "v1/devices/me/attributes", `{"marker":true}`)
	select {
	case u := <-selfUpd:
		assert.Equal(t, tb.AttributeUpdate{Values: tb.Values{"marker": true}}, u, "own publish delivered as update")
	case <-time.After(wait):
		t.Fatal("the marker update never arrived")
	}
	assert.Zero(t, g.Stats().Malformed)
}

// TestEveryCallAcceptedByServer runs every public operation against the
// fake ThingsBoard, which closes the connection on anything the real server
// rejects, and checks the server stored what was meant, typed as the real
// server types it.
func TestEveryCallAcceptedByServer(t *testing.T) {
	srv := tbtest.NewServer(t)
	g := dialTB(t, srv)
	ctx := ctxT(t)

	a, err := g.Connect(ctx, "A", tb.WithDeviceProfile("Sensor A"))
	require.NoError(t, err)
	_, err = g.Connect(ctx, "A") // an existing device keeps its profile
	require.NoError(t, err)
	all := tb.Values{"s": "value1", "b": true, "f": 3.0, "i": 4, "j": map[string]any{"n": 42, "arr": []any{1, 2}}, "num": "42"}
	require.NoError(t, a.PublishTelemetry(ctx, tb.Entry{TS: 10000, Values: all}, tb.Entry{Values: tb.Values{"flat": 1.5}}))
	require.NoError(t, g.PublishTelemetry(ctx, tb.Telemetry{"B": {{TS: 5, Values: tb.Values{"x": 1},
		Metadata: &tb.Metadata{Connector: "modbus", ReceivedAt: time.UnixMilli(1)}}}}))
	require.NoError(t, a.PublishAttributes(ctx, tb.Values{"fw": "v1.0", "n": 2}))
	require.NoError(t, g.PublishAttributes(ctx, tb.Attributes{"A": {"m": 1.0}, "B": {"m": 2}}))
	srv.SetSharedAttributes("A", map[string]any{"sh": 7, "sh2": "x"})

	v, err := a.RequestAttributes(ctx, tb.AttributeKeys{Client: []string{"fw", "n", "missing"}, Shared: []string{"sh"}})
	require.NoError(t, err)
	assert.Equal(t, tb.AttributeValues{Client: tb.Values{"fw": "v1.0", "n": int64(2)}, Shared: tb.Values{"sh": int64(7)}}, v)
	v, err = a.RequestAttributes(ctx, tb.AttributeKeys{Client: []string{"nothing"}})
	require.NoError(t, err)
	assert.Empty(t, v.Client)
	v, err = a.RequestAttributes(ctx, tb.AttributeKeys{Shared: []string{"a,b"}}) // asked for literally
	require.NoError(t, err)
	assert.Empty(t, v.Shared)

	require.NoError(t, g.Claim(ctx, map[string]tb.ClaimRequest{"A": {SecretKey: "k", Duration: 90 * time.Second}, "B": {}}))
	require.NoError(t, g.Self().PublishTelemetry(ctx, tb.Entry{Values: tb.Values{"cpu": 12.5}}))
	require.NoError(t, g.Self().PublishAttributes(ctx, tb.Values{"version": "v0.1"}))
	srv.SetGatewaySharedAttributes(tbtest.DefaultToken, map[string]any{"poll": 5})
	own, err := g.Self().RequestAttributes(ctx, tb.AttributeKeys{Client: []string{"version"}, Shared: []string{"poll"}})
	require.NoError(t, err)
	assert.Equal(t, tb.AttributeValues{Client: tb.Values{"version": "v0.1"}, Shared: tb.Values{"poll": int64(5)}}, own)
	limits, err := g.Self().SessionLimits(ctx)
	require.NoError(t, err)
	assert.Equal(t, 65536, limits.MaxPayloadSize)
	require.NoError(t, g.Self().Claim(ctx, tb.ClaimRequest{SecretKey: "gw"}))

	a.OnRPC(tb.RPCHandlerFunc(func(_ context.Context, r *tb.RPCRequest) (any, error) { return r.Params, nil }))
	reply, err := srv.RPC(ctx, "A", "echo", map[string]any{"pin": 1})
	require.NoError(t, err)
	assert.JSONEq(t, `{"pin":1}`, string(reply))
	require.NoError(t, g.Disconnect(ctx, "A"))

	// The server's view.
	d, ok := srv.Device("A")
	require.True(t, ok)
	assert.Equal(t, "Sensor A", d.Profile)
	assert.False(t, d.Connected)
	b, _ := srv.Device("B")
	assert.Equal(t, "default", b.Profile, "implicit creation by data")
	for key, want := range map[string]any{"s": "value1", "b": true, "f": 3.0, "i": int64(4), "num": int64(42), "j": json.RawMessage(`{"arr":[1,2],"n":42}`)} {
		p, ok := srv.Latest("A", key)
		require.True(t, ok, key)
		assert.Equal(t, want, p.Value, key)
		assert.Equal(t, int64(10000), p.TS, key)
	}
	flat, _ := srv.Latest("A", "flat")
	assert.Greater(t, flat.TS, int64(10000), "flat entries are stored at server time")
	assert.Equal(t, map[string]any{"fw": "v1.0", "n": int64(2), "m": 1.0}, srv.ClientAttributes("A"))
	assert.Equal(t, []tbtest.Claim{{SecretKey: "k", DurationMs: 90000}}, srv.Claims("A"))
	assert.Equal(t, []tbtest.Claim{{DurationMs: 86400000}}, srv.Claims("B"), "server default duration")
	assert.Empty(t, srv.Rejections(), "the SDK sent something the server rejects")
}
