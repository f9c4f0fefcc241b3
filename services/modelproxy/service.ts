import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { ModelProxyService } from "../../gen/shaker/modelproxy/v1/modelproxy_pb.js";
import type { ServiceDeps } from "../shared/deps.js";

const notYet = () => {
  throw new ConnectError("the ModelProxy is not available in this build yet", Code.Unimplemented);
};

/** createModelProxyService builds the ModelProxy's handlers. */
export function createModelProxyService(_deps: ServiceDeps): { impl: ServiceImpl<typeof ModelProxyService>; close(): Promise<void> } {
  return {
    impl: {
      chatCompletion: notYet,
      // eslint-disable-next-line require-yield
      async *chatCompletionStream() {
        notYet();
      },
      embeddings: notYet,
      listModels: notYet,
      listCalls: notYet,
    },
    async close() {},
  };
}
