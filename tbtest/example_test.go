package tbtest_test

import (
	"context"
	"fmt"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/thingsgate/tbgateway/tbtest"
)

// connectGateway connects a plain paho client as the gateway with token.
func connectGateway(s *tbtest.Server, token string, onMessage paho.MessageHandler) paho.Client {
	opts := paho.NewClientOptions().
		AddBroker(s.URL()).
		SetClientID("example-gateway").
		SetUsername(token).
		SetAutoReconnect(false).
		SetDefaultPublishHandler(onMessage) // downlinks arrive even unsubscribed
	c := paho.NewClient(opts)
	if t := c.Connect(); !t.WaitTimeout(5*time.Second) || t.Error() != nil {
		panic(fmt.Sprint("connect: ", t.Error()))
	}
	return c
}

func publish(c paho.Client, topic, payload string) {
	if t := c.Publish(topic, 1, false, payload); !t.WaitTimeout(5*time.Second) || t.Error() != nil {
		panic(fmt.Sprint("publish: ", t.Error()))
	}
}

// A gateway publishes telemetry for a sub-device; the server stores it typed
// as ThingsBoard does.
func ExampleNewServer() {
	s := tbtest.NewServer(nil) // in a test: tbtest.NewServer(t)
	defer s.Close()

	c := connectGateway(s, tbtest.DefaultToken, nil)
	defer c.Disconnect(0)

	publish(c, "v1/gateway/connect", `{"device":"Sensor 1","type":"thermometer"}`)
	publish(c, "v1/gateway/telemetry", `{"Sensor 1":[{"ts":1700000000000,"values":{"temperature":21.5,"count":"7"}}]}`)

	d, _ := s.Device("Sensor 1")
	fmt.Println(d.Name, d.Profile, d.Connected)
	p, _ := s.Latest("Sensor 1", "temperature")
	fmt.Printf("%d %v %T\n", p.TS, p.Value, p.Value)
	p, _ = s.Latest("Sensor 1", "count")
	fmt.Printf("%v %T\n", p.Value, p.Value)
	// Output:
	// Sensor 1 thermometer true
	// 1700000000000 21.5 float64
	// 7 int64
}

// The server calls an RPC on a sub-device; the gateway answers it.
func ExampleServer_RPC() {
	s := tbtest.NewServer(nil)
	defer s.Close()

	var c paho.Client
	c = connectGateway(s, tbtest.DefaultToken, func(_ paho.Client, m paho.Message) {
		fmt.Println("gateway got:", string(m.Payload()))
		c.Publish("v1/gateway/rpc", 1, false, `{"device":"Valve","id":0,"data":{"open":true}}`) // no waiting in a handler
	})
	defer c.Disconnect(0)
	publish(c, "v1/gateway/connect", `{"device":"Valve"}`)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	reply, err := s.RPC(ctx, "Valve", "setState", map[string]bool{"open": true})
	fmt.Println(string(reply), err)
	// Output:
	// gateway got: {"device":"Valve","data":{"id":0,"method":"setState","params":{"open":true}}}
	// {"open":true} <nil>
}

// Refused traffic is recorded: here the attribute-request form of the
// current documentation, which makes ThingsBoard close the connection.
func ExampleServer_Rejections() {
	s := tbtest.NewServer(nil)
	defer s.Close()
	c := connectGateway(s, tbtest.DefaultToken, nil)
	defer c.Disconnect(0)

	c.Publish("v1/gateway/attributes/request", 1, false, `{"id":1,"device":"A","client":["k1"],"shared":["k2"]}`)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = s.WaitFor(ctx, func() bool { return len(s.Rejections()) > 0 })
	r := s.Rejections()[0]
	fmt.Println(r.Topic, r.Closed)
	// Output:
	// v1/gateway/attributes/request true
}
