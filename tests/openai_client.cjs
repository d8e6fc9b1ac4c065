// OpenAI's official JavaScript client (npm "openai") against the caption service's OpenAI-compatible
// endpoint, run by tests/test_service_openai.py: node tests/openai_client.cjs BASE_URL API_KEY PHOTO.
// The package is found through NODE_PATH (.ci/run installs it outside the checkout). Prints one JSON line:
// the caption of a chat completion, the streamed pieces, and the refusal of a remote image URL.
"use strict";

const fs = require("fs");
const { OpenAI } = require("openai");

async function main() {
  const [baseURL, apiKey, photo] = process.argv.slice(2);
  const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 60000 });
  const url = `data:image/jpeg;base64,${fs.readFileSync(photo).toString("base64")}`;
  const messages = [
    { role: "system", content: "You write alt text." },
    { role: "user", content: [{ type: "text", text: "Describe this photo." }, { type: "image_url", image_url: { url } }] },
  ];
  const completion = await client.chat.completions.create({ model: "fc_nsc", messages });
  const pieces = [];
  const finishes = [];
  const stream = await client.chat.completions.create({ model: "fc_nsc", messages, stream: true });
  for await (const chunk of stream) {
    for (const choice of chunk.choices) {
      if (choice.delta.content) pieces.push(choice.delta.content);
      if (choice.finish_reason) finishes.push(choice.finish_reason);
    }
  }
  let refused = null;
  try {
    await client.chat.completions.create({
      model: "fc_nsc",
      messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "https://example.com/cat.jpg" } }] }],
    });
  } catch (error) {
    refused = { status: error.status, message: error.error && error.error.message, name: error.constructor.name };
  }
  console.log(JSON.stringify({
    content: completion.choices[0].message.content, finish: completion.choices[0].finish_reason,
    model: completion.model, pieces, finishes, refused,
  }));
}

main().catch((error) => {
  console.error(`${error.constructor.name}: ${error.message}`);
  process.exit(1);
});
