// The openai package's chat.completions against BASE_URL/v1 (echo models): plain, streamed,
// and a tool call with its result sent back. Prints one JSON object a line.
import OpenAI from "openai";

const client = new OpenAI({ baseURL: `${process.env.BASE_URL}/v1`, apiKey: "unused",
                            maxRetries: 0, timeout: 30_000 });
const print = (result) => console.log(JSON.stringify(result));
const weather = { type: "function", function: { name: "get_weather", description: "Weather in a city",
  parameters: { type: "object", properties: { city: { type: "string" } } } } };

const plain = await client.chat.completions.create({
  model: "fast", max_tokens: 20, messages: [{ role: "user", content: "hello from node ONCE" }] });
print({ case: "plain", text: plain.choices[0].message.content,
        finish: plain.choices[0].finish_reason, usage: plain.usage });

const stream = await client.chat.completions.create({
  model: "fast", max_tokens: 20, stream: true, stream_options: { include_usage: true },
  messages: [{ role: "user", content: "streamed from node ONCE" }] });
const deltas = [];
let finish = null, usage = null;
for await (const chunk of stream) {
  if (chunk.usage) usage = chunk.usage;
  for (const choice of chunk.choices) {
    if (choice.delta?.content) deltas.push(choice.delta.content);
    if (choice.finish_reason) finish = choice.finish_reason;
  }
}
print({ case: "stream", deltas, finish, usage });

const messages = [{ role: "user", content: "CALL it" }];
const called = await client.chat.completions.create({ model: "fast", messages, tools: [weather] });
const message = called.choices[0].message;
print({ case: "tool_call", finish: called.choices[0].finish_reason,
        calls: message.tool_calls.map((c) => ({ id: c.id, name: c.function.name,
                                                 arguments: JSON.parse(c.function.arguments) })) });
messages.push(message, ...message.tool_calls.map((c) => ({
  role: "tool", tool_call_id: c.id, content: "sunny ONCE" })));
const answered = await client.chat.completions.create({ model: "fast", messages, tools: [weather],
                                                        max_tokens: 20 });
print({ case: "tool_result", text: answered.choices[0].message.content,
        finish: answered.choices[0].finish_reason });
