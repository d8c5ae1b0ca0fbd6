package tbgateway_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/thingsgate/tbgateway"
	"github.com/thingsgate/tbgateway/tbtest"
)

// The examples run against tbtest, an in-process fake ThingsBoard, so their
// output is checked by go test.

func Example() {
	srv := tbtest.NewServer(nil, tbtest.WithGateway("GATEWAY_TOKEN"))
	defer srv.Close()
	ctx := context.Background()

	gw, err := tbgateway.Dial(ctx, srv.URL(), tbgateway.WithAccessToken("GATEWAY_TOKEN"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer gw.Close(ctx)

	pump, _ := gw.Connect(ctx, "Pump 7", tbgateway.WithDeviceProfile("pump"))
	_ = pump.PublishTelemetry(ctx, tbgateway.Entry{TS: 1700000000000, Values: tbgateway.Values{"pressure": 3.0, "rpm": 1450}})

	d, _ := srv.Device("Pump 7")
	p, _ := srv.Latest("Pump 7", "pressure")
	r, _ := srv.Latest("Pump 7", "rpm")
	fmt.Printf("%s (%s): pressure %T %v, rpm %T %v\n", d.Name, d.Profile, p.Value, p.Value, r.Value, r.Value)
	// Output: Pump 7 (pump): pressure float64 3, rpm int64 1450
}

func ExampleGateway_PublishTelemetry() {
	srv := tbtest.NewServer(nil)
	defer srv.Close()
	ctx := context.Background()
	gw, _ := tbgateway.Dial(ctx, srv.URL(), tbgateway.WithAccessToken(tbtest.DefaultToken))
	defer gw.Close(ctx)

	// Several devices in one message; an entry without TS is stored at
	// the server's receive time.
	err := gw.PublishTelemetry(ctx, tbgateway.Telemetry{
		"Boiler": {
			{TS: 1700000000000, Values: tbgateway.Values{"temperature": 71.5}},
			{TS: 1700000001000, Values: tbgateway.Values{"temperature": 72.0}},
		},
		"Valve": {{Values: tbgateway.Values{"open": true}}},
	})
	fmt.Println(err, srv.TelemetryCount("Boiler"), srv.TelemetryCount("Valve"))

	// Bad input is refused before anything is sent.
	err = gw.Device("Boiler").PublishTelemetry(ctx, tbgateway.Entry{TS: 1, Values: tbgateway.Values{"t": math.NaN()}})
	fmt.Println(errors.Is(err, tbgateway.ErrInvalidValue), err)
	// Output:
	// <nil> 2 1
	// true tbgateway: device "Boiler": key "t": invalid value: NaN or infinite number
}

// Streaming: Points in a slice reused for every entry cost no allocation,
// and the async call returns once the entry is queued.
func ExampleDevice_PublishTelemetryAsync() {
	srv := tbtest.NewServer(nil)
	defer srv.Close()
	ctx := context.Background()
	gw, _ := tbgateway.Dial(ctx, srv.URL(), tbgateway.WithAccessToken(tbtest.DefaultToken))
	defer gw.Close(ctx)

	meter := gw.Device("Meter 1")
	var acked sync.WaitGroup
	points := make([]tbgateway.Point, 2)
	for i := range 100 {
		points[0] = tbgateway.Float64("power", 1.5+float64(i)/10)
		points[1] = tbgateway.Int("pulses", 1000+i)
		acked.Add(1)
		err := meter.PublishTelemetryAsync(ctx, []tbgateway.Entry{{TS: 1700000000000 + int64(i)*1000, Points: points}}, func(err error) {
			if err != nil {
				fmt.Println("lost:", err)
			}
			acked.Done()
		})
		if err != nil {
			fmt.Println(err)
			acked.Done()
		}
	}
	acked.Wait()
	p, _ := srv.Latest("Meter 1", "power")
	fmt.Println(srv.TelemetryCount("Meter 1"), p.Value)
	// Output: 200 11.4
}

func ExampleDevice_RequestAttributes() {
	srv := tbtest.NewServer(nil)
	defer srv.Close()
	ctx := context.Background()
	gw, _ := tbgateway.Dial(ctx, srv.URL(), tbgateway.WithAccessToken(tbtest.DefaultToken))
	defer gw.Close(ctx)

	dev, _ := gw.Connect(ctx, "Thermostat")
	_ = dev.PublishAttributes(ctx, tbgateway.Values{"firmware": "2.1"})
	srv.SetSharedAttributes("Thermostat", map[string]any{"setpoint": 21.5, "mode": "eco"})

	// Both scopes in one call: two requests on the wire, one answer.
	v, err := dev.RequestAttributes(ctx, tbgateway.AttributeKeys{
		Client: []string{"firmware"},
		Shared: []string{"setpoint", "mode", "missing"},
	})
	fmt.Println(err, v.Client, v.Shared)
	// Output: <nil> map[firmware:2.1] map[mode:eco setpoint:21.5]
}

func ExampleRPCMux() {
	srv := tbtest.NewServer(nil)
	defer srv.Close()
	ctx := context.Background()
	gw, _ := tbgateway.Dial(ctx, srv.URL(), tbgateway.WithAccessToken(tbtest.DefaultToken))
	defer gw.Close(ctx)

	relay, _ := gw.Connect(ctx, "Relay")
	mux := tbgateway.NewRPCMux()
	mux.HandleFunc("setState", func(ctx context.Context, r *tbgateway.RPCRequest) (any, error) {
		var p struct{ On bool }
		if err := r.Bind(&p); err != nil {
			return nil, err
		}
		return map[string]any{"on": p.On}, nil
	})
	mux.HandleFunc("", func(ctx context.Context, r *tbgateway.RPCRequest) (any, error) {
		return nil, fmt.Errorf("unsupported method %q", r.Method) // every other method
	})
	relay.OnRPC(mux)

	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	reply, _ := srv.RPC(rctx, "Relay", "setState", map[string]any{"on": true})
	fmt.Println(string(reply))
	reply, _ = srv.RPC(rctx, "Relay", "reboot", nil)
	fmt.Println(string(reply))
	// Output:
	// {"on":true}
	// {"error":"unsupported method \"reboot\""}
}

func ExampleGateway_OnAttributeUpdate() {
	srv := tbtest.NewServer(nil)
	defer srv.Close()
	ctx := context.Background()
	gw, _ := tbgateway.Dial(ctx, srv.URL(), tbgateway.WithAccessToken(tbtest.DefaultToken))
	defer gw.Close(ctx)

	updates := make(chan tbgateway.AttributeUpdate, 2)
	gw.OnAttributeUpdate(tbgateway.AttributeHandlerFunc(func(ctx context.Context, u tbgateway.AttributeUpdate) { updates <- u }))
	_, _ = gw.Connect(ctx, "Lamp")

	srv.SetSharedAttributes("Lamp", map[string]any{"brightness": 80})
	srv.DeleteSharedAttributes("Lamp", "brightness")
	for range 2 {
		u := <-updates
		fmt.Printf("%s changed %v deleted %v\n", u.Device, u.Values, u.Deleted)
	}
	// Output:
	// Lamp changed map[brightness:80] deleted []
	// Lamp changed map[] deleted [brightness]
}

func ExampleGatewayDevice_SessionLimits() {
	srv := tbtest.NewServer(nil)
	defer srv.Close()
	ctx := context.Background()
	gw, _ := tbgateway.Dial(ctx, srv.URL(), tbgateway.WithAccessToken(tbtest.DefaultToken))
	defer gw.Close(ctx)

	l, err := gw.Self().SessionLimits(ctx)
	fmt.Println(err, l.MaxPayloadSize, l.MaxInflightMessages)
	// Output: <nil> 65536 100
}

func ExampleDial_refused() {
	srv := tbtest.NewServer(nil)
	defer srv.Close()

	_, err := tbgateway.Dial(context.Background(), srv.URL(), tbgateway.WithAccessToken("wrong-token"))
	var ce *tbgateway.ConnectError
	fmt.Println(errors.As(err, &ce), ce.Code)
	// Output: true 5
}

// A gateway that boots before its network: Dial returns at once, the
// device's connect and its data wait in the queue, and go out in that
// order once the server is reachable.
func ExampleWithOfflineStart() {
	srv := tbtest.NewServer(nil)
	defer srv.Close()
	srv.Stop() // not reachable yet
	ctx := context.Background()

	gw, err := tbgateway.Dial(ctx, srv.URL(), tbgateway.WithAccessToken(tbtest.DefaultToken), tbgateway.WithOfflineStart())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer gw.Close(ctx)
	fmt.Println("connected:", gw.Connected())

	// Connect cannot be acknowledged yet: it stays queued (ErrEnqueued).
	short, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	_, err = gw.Connect(short, "Meter 1", tbgateway.WithDeviceProfile("meter"))
	cancel()
	fmt.Println("connect queued:", errors.Is(err, tbgateway.ErrEnqueued))
	done := make(chan error, 1)
	_ = gw.Device("Meter 1").PublishTelemetryAsync(ctx, []tbgateway.Entry{{TS: 1700000000000, Values: tbgateway.Values{"kwh": 12}}}, func(err error) { done <- err })

	_ = srv.Start() // the network comes up
	fmt.Println("delivered:", <-done)
	d, _ := srv.Device("Meter 1")
	fmt.Println(d.Name, d.Profile, srv.TelemetryCount("Meter 1"))
	// Output:
	// connected: false
	// connect queued: true
	// delivered: <nil>
	// Meter 1 meter 1
}
