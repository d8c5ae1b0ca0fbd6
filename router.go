package tbgateway

import (
	"strings"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// onMessage routes every received message; paho calls it on its network
// goroutine, so it only decodes and queues.
func (g *Gateway) onMessage(_ mqtt.Client, m mqtt.Message) {
	g.stats.received.Add(1)
	topic, payload := m.Topic(), m.Payload()
	if strings.HasPrefix(topic, "v1/devices/me/") && g.echo.consume(topic, payload) {
		g.stats.echoes.Add(1)
		g.sess.sawEcho(topic)
		return
	}
	switch {
	case topic == topicGatewayAttributes:
		g.onAttributeUpdate(payload)
	case topic == topicGatewayRPC:
		g.onRPCRequest(payload)
	case topic == topicGatewayAttrResponse:
		g.onAttributeResponse(payload)
	case topic == topicGatewayDisconnect:
		g.onDisconnectNotice(payload)
	case topic == topicSelfAttributes:
		g.onSelfAttributeUpdate(payload)
	case strings.HasPrefix(topic, topicSelfAttrResponsePrefix):
		g.onSelfAttributeResponse(topic[len(topicSelfAttrResponsePrefix):], payload)
	case strings.HasPrefix(topic, topicSelfRPCRequestPrefix):
		g.onSelfRPCRequest(topic[len(topicSelfRPCRequestPrefix):], payload)
	case strings.HasPrefix(topic, topicSelfRPCResponsePrefix):
		g.onSelfRPCResponse(topic[len(topicSelfRPCResponsePrefix):], payload)
	case strings.HasPrefix(topic, "v2/"):
		g.onPackageMessage(topic, payload)
	default:
		g.log.Debug("tbgateway: message on unknown topic ignored", "topic", topic)
	}
}

// malformed counts and logs a message from the server that could not be
// understood; it is dropped and the connection carries on.
func (g *Gateway) malformed(topic string, payload []byte, err error) {
	g.stats.malformed.Add(1)
	g.log.Warn("tbgateway: malformed message from server dropped", "topic", topic, "err", err)
	g.log.Debug("tbgateway: malformed payload", "topic", topic, "payload", string(payload))
}
