package tbtest_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/thingsgate/tbgateway/tbtest"
)

type rpcResult struct {
	data json.RawMessage
	err  error
}

// callRPC runs s.RPC in a goroutine.
func callRPC(ctx context.Context, s *tbtest.Server, device, method string, params any) chan rpcResult {
	ch := make(chan rpcResult, 1)
	go func() {
		d, err := s.RPC(ctx, device, method, params)
		ch <- rpcResult{d, err}
	}()
	return ch
}

func result(t *testing.T, ch chan rpcResult) rpcResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(waitTimeout):
		t.Fatal("RPC call did not return")
		return rpcResult{}
	}
}

func waiting(s *tbtest.Server, name string) int {
	d, _ := s.Device(name)
	return d.WaitingRPCs
}

func TestRPC(t *testing.T) {
	s := tbtest.NewServer(t)
	g := dial(t, s, tbtest.DefaultToken)
	g.pub("v1/gateway/connect", `{"device":"Device A"}`)
	g.pub("v1/gateway/connect", `{"device":"Dev"}`)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()

	// First RPC of each device has id 0.
	resA := callRPC(ctx, s, "Device A", "toggle_gpio", map[string]int{"pin": 1})
	m := g.next("v1/gateway/rpc")
	assert.Equal(t, vec(t, "downlink", "rpc-request").Payload, string(m.Payload()))
	assert.Equal(t, byte(1), m.Qos())
	v := vec(t, "uplink", "rpc-reply")
	g.pub(v.Topic, v.Payload)
	r := result(t, resA)
	require.NoError(t, r.err)
	assert.Equal(t, `{"success":true}`, string(r.data))

	resDev := callRPC(ctx, s, "Dev", "getValue", true)
	m = g.next("v1/gateway/rpc")
	assert.Equal(t, `{"device":"Dev","data":{"id":0,"method":"getValue","params":true}}`, string(m.Payload()))

	// Ids count per device; one-way RPCs consume ids too.
	require.NoError(t, s.OneWayRPC(ctx, "Device A", "reboot", nil))
	m = g.next("v1/gateway/rpc")
	assert.Equal(t, `{"device":"Device A","data":{"id":1,"method":"reboot","params":null}}`, string(m.Payload()))
	resA2 := callRPC(ctx, s, "Device A", "get", json.RawMessage(`[1, 2]`))
	m = g.next("v1/gateway/rpc")
	assert.Equal(t, `{"device":"Device A","data":{"id":2,"method":"get","params":[1,2]}}`, string(m.Payload()))

	// Replies are matched by (device, id); a stale one is dropped.
	g.pub("v1/gateway/rpc", `{"device":"Device A","id":7,"data":"stale"}`)
	g.pub("v1/gateway/rpc", `{"device":"Device A","id":2,"data":"ok"}`)
	g.pub("v1/gateway/rpc", `{"device":"Dev","id":0,"data":{"response":"someResponse"}}`)
	r = result(t, resA2)
	require.NoError(t, r.err)
	assert.Equal(t, `"ok"`, string(r.data))
	r = result(t, resDev)
	require.NoError(t, r.err)
	assert.Equal(t, `{"response":"someResponse"}`, string(r.data))

	// Unknown devices fail at once; an unanswered call ends with its context.
	_, err := s.RPC(ctx, "nobody", "m", nil)
	require.ErrorIs(t, err, tbtest.ErrUnknownDevice)
	require.ErrorIs(t, s.OneWayRPC(ctx, "nobody", "m", nil), tbtest.ErrUnknownDevice)
	_, err = s.RPC(ctx, s.GatewayName(tbtest.DefaultToken), "m", nil)
	require.ErrorContains(t, err, "use GatewayRPC")
	short, cancelShort := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancelShort()
	_, err = s.RPC(short, "Dev", "noReply", nil)
	require.ErrorIs(t, err, context.DeadlineExceeded)
}

func TestRPCSubscribedQoS0(t *testing.T) {
	s := tbtest.NewServer(t)
	g := dial(t, s, tbtest.DefaultToken)
	require.Equal(t, byte(0), g.sub("v1/gateway/rpc", 0))
	g.pub("v1/gateway/connect", `{"device":"A"}`)
	require.NoError(t, s.OneWayRPC(context.Background(), "A", "m", map[string]any{}))
	m := g.next("v1/gateway/rpc")
	assert.Equal(t, byte(0), m.Qos(), "granted QoS of the subscription")
}

// WIRE §10.6: an RPC to a device without a session is kept until its
// timeout and written with a fresh id once the device's session opens.
func TestRPCToOfflineDevice(t *testing.T) {
	s := tbtest.NewServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	g := dial(t, s, tbtest.DefaultToken)
	g.pub("v1/gateway/connect", `{"device":"A"}`)
	require.NoError(t, s.OneWayRPC(ctx, "A", "first", nil)) // id 0
	g.next("v1/gateway/rpc")
	g.pub("v1/gateway/disconnect", `{"device":"A"}`)

	// Kept while A has no session, in issue order; one of them expires.
	sent := len(s.Sent())
	first := callRPC(ctx, s, "A", "one", 1)
	waitFor(t, s, func() bool { return waiting(s, "A") == 1 }, "first RPC kept")
	short, cancelShort := context.WithCancel(ctx)
	expired := callRPC(short, s, "A", "expired", nil)
	waitFor(t, s, func() bool { return waiting(s, "A") == 2 }, "second RPC kept")
	oneWay := make(chan error, 1)
	go func() { oneWay <- s.OneWayRPC(ctx, "A", "two", 2) }()
	waitFor(t, s, func() bool { return waiting(s, "A") == 3 }, "third RPC kept")
	cancelShort()
	r := result(t, expired)
	require.ErrorIs(t, r.err, context.Canceled)
	assert.ErrorContains(t, r.err, "not delivered")
	assert.Equal(t, 2, waiting(s, "A"), "the expired RPC is dropped")
	assert.Len(t, s.Sent(), sent, "nothing written without a session")
	d, _ := s.Device("A")
	assert.False(t, d.Connected)

	// Data for A opens its session: the kept RPCs follow the PUBACK with
	// fresh ids; the expired one used none.
	g.pub("v1/gateway/telemetry", `{"A":[{"t":1}]}`)
	g.next("v1/gateway/rpc")
	g.next("v1/gateway/rpc")
	written := s.Sent()[sent:]
	require.Len(t, written, 2)
	assert.Equal(t, `{"device":"A","data":{"id":1,"method":"one","params":1}}`, string(written[0].Payload), "wire order is issue order")
	assert.Equal(t, `{"device":"A","data":{"id":2,"method":"two","params":2}}`, string(written[1].Payload))
	select {
	case err := <-oneWay:
		require.NoError(t, err)
	case <-time.After(waitTimeout):
		t.Fatal("one-way RPC not returned after delivery")
	}
	assert.Zero(t, waiting(s, "A"))
	g.pub("v1/gateway/rpc", `{"device":"A","id":1,"data":"done"}`)
	r = result(t, first)
	require.NoError(t, r.err)
	assert.Equal(t, `"done"`, string(r.data))

	// An outage: the RPC issued meanwhile comes right after the device is
	// announced again on the new connection, and the reply there counts.
	require.True(t, s.DropConnection(tbtest.DefaultToken))
	g.waitLost()
	during := callRPC(ctx, s, "A", "during", nil)
	waitFor(t, s, func() bool { return waiting(s, "A") == 1 }, "RPC kept during the outage")
	g = dial(t, s, tbtest.DefaultToken)
	assert.Equal(t, 1, waiting(s, "A"), "a gateway connection alone opens no sub-device session")
	g.pub("v1/gateway/connect", `{"device":"A"}`)
	m := g.next("v1/gateway/rpc")
	assert.Equal(t, `{"device":"A","data":{"id":3,"method":"during","params":null}}`, string(m.Payload()))
	g.pub("v1/gateway/rpc", `{"device":"A","id":3,"data":{"ok":true}}`)
	r = result(t, during)
	require.NoError(t, r.err)
	assert.Equal(t, `{"ok":true}`, string(r.data))

	// A device created in the UI and never connected keeps RPCs too; a
	// delete fails them.
	s.AddDevice("Fresh", "P")
	fresh := callRPC(ctx, s, "Fresh", "hello", nil)
	waitFor(t, s, func() bool { return waiting(s, "Fresh") == 1 }, "RPC kept for a new device")
	s.NotifyDeviceDeleted("Fresh")
	require.ErrorIs(t, result(t, fresh).err, tbtest.ErrUnknownDevice)
}

// An RPC written before the connection drops stays pending under its id:
// the gateway may answer it on its next connection.
func TestRPCWrittenBeforeOutage(t *testing.T) {
	s := tbtest.NewServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	g := dial(t, s, tbtest.DefaultToken)
	g.pub("v1/gateway/connect", `{"device":"A"}`)
	res := callRPC(ctx, s, "A", "slow", nil)
	g.next("v1/gateway/rpc")
	require.True(t, s.DropConnection(tbtest.DefaultToken))
	g.waitLost()
	g = dial(t, s, tbtest.DefaultToken)
	g.pub("v1/gateway/rpc", `{"device":"A","id":0,"data":1}`)
	r := result(t, res)
	require.NoError(t, r.err)
	assert.Equal(t, `1`, string(r.data))
	assert.Equal(t, 0, g.received("v1/gateway/rpc"), "not written again")
}

func TestRPCWaitsForClose(t *testing.T) {
	s := tbtest.NewServer(nil)
	s.AddDevice("A", "default")
	res := callRPC(context.Background(), s, "A", "never", nil)
	waitFor(t, s, func() bool { return waiting(s, "A") == 1 }, "RPC kept")
	s.Close()
	require.ErrorIs(t, result(t, res).err, tbtest.ErrServerClosed)
}

func TestGatewayRPC(t *testing.T) {
	s := tbtest.NewServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	_, err := s.GatewayRPC(ctx, "unknown", "reboot", nil)
	require.ErrorIs(t, err, tbtest.ErrUnknownGateway)
	gwName := s.GatewayName(tbtest.DefaultToken)

	// Offline, or connected without v1/devices/me/rpc/request/+: the RPC is
	// kept, and dropped when its context ends.
	short, cancelShort := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancelShort()
	_, err = s.GatewayRPC(short, tbtest.DefaultToken, "offline", nil)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	g := dial(t, s, tbtest.DefaultToken)
	sent := len(s.Sent())
	short2, cancelShort2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancelShort2()
	_, err = s.GatewayRPC(short2, tbtest.DefaultToken, "expired", nil)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Len(t, s.Sent(), sent, "nothing written before the subscription")
	assert.Zero(t, waiting(s, gwName))

	done := make(chan json.RawMessage, 1)
	go func() {
		d, err := s.GatewayRPC(ctx, tbtest.DefaultToken, "reboot", map[string]any{})
		assert.NoError(t, err)
		done <- d
	}()
	waitFor(t, s, func() bool { return waiting(s, gwName) == 1 }, "gateway RPC kept")
	require.Equal(t, byte(1), g.sub("v1/devices/me/rpc/request/+", 1))
	// Ids are given when written: the expired RPCs used none.
	m := g.next("v1/devices/me/rpc/request/0")
	assert.Equal(t, `{"method":"reboot","params":{}}`, string(m.Payload()))
	g.pub("v1/devices/me/rpc/response/0", `{"done":true}`)
	assert.Equal(t, `{"done":true}`, string(<-done))

	// Subscribed: written at once; the answer is returned verbatim.
	go func() {
		d, err := s.GatewayRPC(ctx, tbtest.DefaultToken, "ping", "x")
		assert.NoError(t, err)
		done <- d
	}()
	m = g.next("v1/devices/me/rpc/request/1")
	assert.Equal(t, `{"method":"ping","params":"x"}`, string(m.Payload()))
	g.pub("v1/devices/me/rpc/response/1", `not json`)
	assert.Equal(t, `not json`, string(<-done))
}

func TestDeviceRenamedAndDeletedNotifications(t *testing.T) {
	s := tbtest.NewServer(t)
	g := dial(t, s, tbtest.DefaultToken)
	g.pub("v1/gateway/connect", `{"device":"Old Name","type":"T"}`)
	g.pub("v1/gateway/connect", `{"device":"Device A"}`)

	s.NotifyDeviceRenamed("Old Name", "New Name")
	s.NotifyDeviceDeleted("Device A")
	_, ok := s.Device("Old Name")
	assert.False(t, ok)
	d, ok := s.Device("New Name")
	require.True(t, ok)
	assert.Equal(t, "T", d.Profile)
	assert.False(t, d.Connected, "the session under the old name is closed")
	_, ok = s.Device("Device A")
	assert.False(t, ok)
	gw, _ := s.Device(s.GatewayName(tbtest.DefaultToken))
	assert.Equal(t, 2, gw.WaitingRPCs)

	// Delivered once the gateway subscribes to its RPC topic.
	require.Equal(t, byte(1), g.sub("v1/devices/me/rpc/request/+", 1))
	m := g.next("v1/devices/me/rpc/request/0")
	assert.JSONEq(t, `{"method":"gateway_device_renamed","params":{"Old Name":"New Name"}}`, string(m.Payload()))
	m = g.next("v1/devices/me/rpc/request/1")
	assert.JSONEq(t, `{"method":"gateway_device_deleted","params":"Device A"}`, string(m.Payload()))

	// A later uplink for a deleted name creates a new device.
	g.pub("v1/gateway/telemetry", `{"Device A":[{"t":1}]}`)
	assert.True(t, connected(s, "Device A"))
}
